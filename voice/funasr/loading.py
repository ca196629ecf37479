"""Loading a FunASR model: local directory or ModelScope name, funasr's noise silenced, every failure AsrUnavailable."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from voice.base import AsrUnavailable

logger = logging.getLogger(__name__)

HUB_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def is_hub_name(model: str | Path) -> bool:
    """True when `model` can only mean a ModelScope name ("paraformer-zh-streaming", "iic/name"), not a path.

    Path objects, absolute paths, "~", "./", "../" and anything with more than one "/" are local paths, so a
    mistyped directory fails at once instead of after funasr's 20 s of download retries.
    """
    return isinstance(model, str) and not Path(model).exists() and HUB_NAME_PATTERN.match(model) is not None


class _FunAsrInfoFilter(logging.Filter):
    """Drops funasr's INFO chatter, which it logs on the root logger itself ("Loading ckpt ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "funasr" not in record.pathname


_FUNASR_INFO_FILTER = _FunAsrInfoFilter()


@contextlib.contextmanager
def quiet_funasr() -> Iterator[None]:
    """Swallow funasr's prints and undo the logging.basicConfig() that its import and AutoModel() call."""
    root = logging.getLogger()
    if _FUNASR_INFO_FILTER not in root.filters:
        root.addFilter(_FUNASR_INFO_FILTER)  # root logger filters see only records logged on root itself
    handlers, level = list(root.handlers), root.level
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def release_freed_memory() -> None:
    """Hand the checkpoint copy freed after loading back to the OS (glibc keeps it: 3.1 → 1.4 GB for the real model)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def load_auto_model(source: str | Path, device: str) -> Any:
    """funasr's AutoModel for a local directory, or a hub name fetched once; every failure is AsrUnavailable."""
    from_hub = is_hub_name(source)
    if not from_hub:
        directory = Path(source).expanduser().absolute()
        if not directory.is_dir():
            raise AsrUnavailable(f"ASR model directory {directory} does not exist")
        if not (directory / "config.yaml").is_file() and not (directory / "configuration.json").is_file():
            raise AsrUnavailable(f"ASR model directory {directory} has no config.yaml (nor configuration.json)")
        if (directory / "config.yaml").is_file() and not (directory / "model.pt").is_file():
            raise AsrUnavailable(f"ASR model directory {directory} has config.yaml but no model.pt")
        source = str(directory)
    else:
        logger.info("%s is not a local directory: fetching it from ModelScope (once; needs internet)", source)
    try:
        with quiet_funasr():
            import funasr
            from funasr import AutoModel
    except ImportError as error:
        raise AsrUnavailable(f"funasr cannot be imported ({error}); install funasr and kaldi-native-fbank") from error
    try:
        with quiet_funasr():
            return AutoModel(model=str(source), device=device, disable_update=True, disable_pbar=True,
                             log_level="ERROR")
    except Exception as error:  # funasr raises RuntimeError, AssertionError, yaml and torch errors
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if from_hub:
            raise AsrUnavailable(
                f"ASR model {source!r} is not a local directory, so funasr tried to download it from ModelScope, "
                f"and that failed (no internet? pass the path of a downloaded model directory instead): {reason}"
            ) from error
        hint = ""
        if "is not registered" in reason:  # a missing dependency silently unregisters the model class
            failed = sorted(name for name in getattr(funasr, "get_import_errors", dict)() if ".models." in name)
            hint = f"; funasr model modules that failed to import: {failed[:5]}" if failed else ""
        raise AsrUnavailable(f"cannot load ASR model from {source}: {reason}{hint}") from error
