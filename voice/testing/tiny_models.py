"""Builds tiny random-weight FunASR models on disk (streaming Paraformer, CT punctuation) for tests and benchmarks."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Token ids 0, 1 and 2 are fixed by Paraformer (blank, sos, eos); CharTokenizer needs <unk>.
SPECIAL_TOKENS = ("<blank>", "<s>", "</s>")
UNKNOWN_TOKEN = "<unk>"
HOTLINE_CHARACTERS = "社保医疗养老失业工伤生育缴费查询办理卡号码请问您好我要转人谢金险"
DEFAULT_TOKENS: tuple[str, ...] = (*SPECIAL_TOKENS, *HOTLINE_CHARACTERS, UNKNOWN_TOKEN)

FILTERBANK_BINS = 80
LOW_FRAME_RATE_STACK = 7  # lfr_m: frames stacked into one encoder input vector
ENCODER_INPUT_SIZE = FILTERBANK_BINS * LOW_FRAME_RATE_STACK  # 560
TINY_DIMENSION = 32
FINGERPRINT_PATTERN = re.compile(r"^# model\.pt sha256 ([0-9a-f]{64})$", re.MULTILINE)

# The real paraformer-zh-streaming layout (50 encoder / 16 decoder blocks of 512 dims) with tiny sizes.
_PARAFORMER_CONFIG_TEMPLATE = """\
model: ParaformerStreaming
model_conf: {{ctc_weight: 0.0, lsm_weight: 0.1, length_normalized_loss: true, predictor_weight: 1.0, predictor_bias: 1, sampling_ratio: 0.75}}
encoder: SANMEncoderChunkOpt
encoder_conf: {{output_size: {dimension}, attention_heads: {heads}, linear_units: {feed_forward}, num_blocks: {encoder_blocks},
  dropout_rate: 0.1, positional_dropout_rate: 0.1, attention_dropout_rate: 0.1, input_layer: pe_online,
  pos_enc_class: SinusoidalPositionEncoder, normalize_before: true, kernel_size: 11, sanm_shfit: 0,
  selfattention_layer_type: sanm, chunk_size: [12, 15], stride: [8, 10], pad_left: [0, 0],
  encoder_att_look_back_factor: [4, 4], decoder_att_look_back_factor: [1, 1]}}
decoder: ParaformerSANMDecoder
decoder_conf: {{attention_heads: {heads}, linear_units: {feed_forward}, num_blocks: {decoder_blocks}, dropout_rate: 0.1,
  positional_dropout_rate: 0.1, self_attention_dropout_rate: 0.1, src_attention_dropout_rate: 0.1,
  att_layer_num: {decoder_blocks}, kernel_size: 11, sanm_shfit: 5}}
predictor: CifPredictorV2
predictor_conf: {{idim: {dimension}, threshold: 1.0, l_order: 1, r_order: 1, tail_threshold: 0.45}}
frontend: WavFrontendOnline
frontend_conf: {{fs: 16000, window: hamming, n_mels: {bins}, frame_length: 25, frame_shift: 10, lfr_m: {stack}, lfr_n: 6,
  dither: 0.0}}
tokenizer: CharTokenizer
tokenizer_conf: {{unk_symbol: <unk>, split_with_space: true}}
ctc_conf: {{dropout_rate: 0.0, ctc_type: builtin, reduce: true, ignore_nan_grad: true}}
normalize: null
"""

PUNCTUATION_MARKS = ("<unk>", "_", "，", "。", "？", "、")
_PUNCTUATION_CONFIG_TEMPLATE = """\
model: CTTransformer
model_conf: {{ignore_id: 0, embed_unit: {dimension}, att_unit: {dimension}, dropout_rate: 0.1,
  punc_list: {marks}, sentence_end_id: 3, punc_weight: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]}}
encoder: SANMEncoder
encoder_conf: {{input_size: {dimension}, output_size: {dimension}, attention_heads: 2, linear_units: {feed_forward},
  num_blocks: 1, dropout_rate: 0.1, positional_dropout_rate: 0.1, attention_dropout_rate: 0.0, input_layer: pe,
  pos_enc_class: SinusoidalPositionEncoder, normalize_before: true, kernel_size: 11, sanm_shfit: 0,
  selfattention_layer_type: sanm, padding_idx: 0}}
tokenizer: CharTokenizer
tokenizer_conf: {{unk_symbol: <unk>}}
"""


def paraformer_config_text(*, dimension: int = TINY_DIMENSION, heads: int = 2, feed_forward: int = 64,
                           encoder_blocks: int = 2, decoder_blocks: int = 2) -> str:
    """The config.yaml of a streaming Paraformer; the real model is 512 dims, 4 heads, 2048, 50 and 16 blocks."""
    return _PARAFORMER_CONFIG_TEMPLATE.format(
        dimension=dimension, heads=heads, feed_forward=feed_forward, encoder_blocks=encoder_blocks,
        decoder_blocks=decoder_blocks, bins=FILTERBANK_BINS, stack=LOW_FRAME_RATE_STACK)


def identity_cmvn_text(dimension: int = ENCODER_INPUT_SIZE) -> str:
    """A Kaldi nnet am.mvn that shifts by 0 and scales by 1, so features pass through unchanged."""
    zeros = " ".join(["0"] * dimension)
    ones = " ".join(["1"] * dimension)
    return (f"<Nnet>\n<AddShift> {dimension} {dimension}\n<LearnRateCoef> 0 [ {zeros} ]\n"
            f"<Rescale> {dimension} {dimension}\n<LearnRateCoef> 0 [ {ones} ]\n</Nnet>\n")


def build_tiny_paraformer(directory: Path, tokens: Sequence[str] = DEFAULT_TOKENS, seed: int = 0) -> Path:
    """Write config.yaml, model.pt, tokens.json and am.mvn of a random streaming Paraformer; returns the directory.

    The same tokens and seed always give byte-identical files. A directory that already holds them is left
    untouched, without importing funasr (config.yaml records the SHA-256 of model.pt for that check).
    """
    return _build(Path(directory), paraformer_config_text(), _check_tokens(tokens), seed,
                  extra_files={"am.mvn": identity_cmvn_text()}, model_class="ParaformerStreaming",
                  input_size=ENCODER_INPUT_SIZE)


LARGE_VOCABULARY = 8404  # paraformer-zh-streaming's token count


def large_tokens(count: int = LARGE_VOCABULARY) -> tuple[str, ...]:
    """A token list the size of the real model's: the special tokens, then CJK characters in code-point order."""
    characters = [chr(0x4E00 + offset) for offset in range(count - len(SPECIAL_TOKENS) - 1)]
    return (*SPECIAL_TOKENS, *characters, UNKNOWN_TOKEN)


def build_random_paraformer_large(directory: Path, seed: int = 0) -> Path:
    """The real paraformer-zh-streaming architecture (512 dims, 4 heads, 2048 units, 50 encoder and 16 decoder
    blocks, 8404 tokens; ~220 M parameters) with random weights: what one stream really costs, where the trained
    weights cannot be downloaded. Its text is meaningless."""
    config = paraformer_config_text(dimension=512, heads=4, feed_forward=2048, encoder_blocks=50, decoder_blocks=16)
    return _build(Path(directory), config, list(large_tokens()), seed, extra_files={"am.mvn": identity_cmvn_text()},
                  model_class="ParaformerStreaming", input_size=ENCODER_INPUT_SIZE)


def build_tiny_punctuation(directory: Path, tokens: Sequence[str] = DEFAULT_TOKENS, seed: int = 0) -> Path:
    """Write config.yaml, model.pt and tokens.json of a random CT-Transformer punctuation model."""
    marks = "[" + ", ".join(json.dumps(mark, ensure_ascii=False) for mark in PUNCTUATION_MARKS) + "]"
    config = _PUNCTUATION_CONFIG_TEMPLATE.format(dimension=16, feed_forward=32, marks=marks)
    return _build(Path(directory), config, _check_tokens(tokens), seed, extra_files={},
                  model_class="CTTransformer", input_size=None, adjust=_never_predict_unknown_mark)


def _never_predict_unknown_mark(model: Any) -> None:
    """A trained model never outputs class 0 ("<unk>"); a random one would, and print "<unk>" into the text."""
    import torch

    with torch.no_grad():
        model.decoder.bias[0] = -1000.0


def _check_tokens(tokens: Sequence[str]) -> list[str]:
    token_list = list(tokens)
    if tuple(token_list[:3]) != SPECIAL_TOKENS:
        raise ValueError(f"the first three tokens must be {SPECIAL_TOKENS}, got {token_list[:3]}")
    if UNKNOWN_TOKEN not in token_list:
        raise ValueError(f"the token list must contain {UNKNOWN_TOKEN}")
    if len(set(token_list)) != len(token_list):
        raise ValueError("the token list has duplicates")
    return token_list


def _build(directory: Path, config: str, tokens: list[str], seed: int, *, extra_files: dict[str, str],
           model_class: str, input_size: int | None, adjust: Callable[[Any], None] | None = None) -> Path:
    tokens_text = json.dumps(tokens, ensure_ascii=False, indent=0) + "\n"
    # The header keeps the module's old name: a changed config.yaml would rebuild every model already on disk.
    config = f"# random weights, seed {seed}; built by voice.tiny_models\n{config}"
    if _is_built(directory, config, tokens_text, extra_files):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    model_bytes = _random_state_dict_bytes(config, model_class, len(tokens), input_size, seed, adjust)
    fingerprint = hashlib.sha256(model_bytes).hexdigest()
    _write_if_changed(directory / "model.pt", model_bytes)
    _write_if_changed(directory / "tokens.json", tokens_text.encode())
    for name, text in extra_files.items():
        _write_if_changed(directory / name, text.encode())
    # config.yaml goes last: its fingerprint line marks a complete build.
    _write_if_changed(directory / "config.yaml", _with_fingerprint(config, fingerprint).encode())
    return directory


def _with_fingerprint(config: str, fingerprint: str) -> str:
    header, _, body = config.partition("\n")
    return f"{header}\n# model.pt sha256 {fingerprint}\n{body}"


def _is_built(directory: Path, expected_config: str, tokens_text: str, extra_files: dict[str, str]) -> bool:
    config_path = directory / "config.yaml"
    model_path = directory / "model.pt"
    if not (config_path.is_file() and model_path.is_file()):
        return False
    config = config_path.read_text(encoding="utf-8")
    match = FINGERPRINT_PATTERN.search(config)
    if match is None or config != _with_fingerprint(expected_config, match.group(1)):
        return False
    if hashlib.sha256(model_path.read_bytes()).hexdigest() != match.group(1):
        return False
    expected = {"tokens.json": tokens_text, **extra_files}
    return all((directory / name).is_file() and (directory / name).read_text(encoding="utf-8") == text
               for name, text in expected.items())


def _write_if_changed(path: Path, content: bytes) -> None:
    if path.is_file() and path.read_bytes() == content:
        return
    temporary = path.with_name(path.name + ".partial")
    temporary.write_bytes(content)
    temporary.replace(path)


def _random_state_dict_bytes(config_text: str, model_class: str, vocabulary_size: int, input_size: int | None,
                             seed: int, adjust: Callable[[Any], None] | None) -> bytes:
    """Instantiate the model class exactly as funasr's AutoModel does and serialise its random state_dict."""
    import io

    import torch
    import yaml

    from voice.funasr.loading import quiet_funasr

    with quiet_funasr():  # funasr prints an ffmpeg notice and configures root logging on import
        import funasr  # noqa: F401  (registers the model classes)
        from funasr.register import tables
    config = yaml.safe_load(config_text)
    arguments = dict(config)
    arguments.update(config["model_conf"])
    arguments["vocab_size"] = vocabulary_size
    if input_size is not None:
        arguments["input_size"] = input_size
    constructor = tables.model_classes.get(model_class)
    if constructor is None:
        raise RuntimeError(f"funasr has no model class {model_class!r}; see funasr.get_import_errors()")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = constructor(**arguments)
    if adjust is not None:
        adjust(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()
