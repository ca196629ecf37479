"""`--transcripts known`: an ASR wrapper that decodes every frame (its real cost) but returns the text of the
benchmark question being spoken, and the server entry point that runs the hotline with it."""

from __future__ import annotations

import asyncio

from telephony.bench.simulated_caller import voiced_frames
from voice.base import AsrCapabilities, Transcript
from voice.tts import EspeakTtsEngine

BENCH_QUESTIONS = ("社保卡丢了怎么办", "失业金怎么领", "退休了养老金怎么办", "灵活就业怎么交社保", "工伤认定要什么材料")


async def synthesize_questions() -> list[bytes]:
    engine = EspeakTtsEngine()
    questions = []
    for text in BENCH_QUESTIONS:
        pcm = b"".join([chunk async for chunk in engine.synthesize(text)])
        questions.append(pcm)
    return questions


class KnownQuestionAsr:
    """For `--transcripts known`: the wrapped engine decodes every frame (its real cost), but the text returned is
    the known benchmark question being spoken, recognised by its voiced length. This shows how endpointing and
    answers behave with a correct transcript, which the tiny random model here cannot give."""

    name = "known-questions"

    def __init__(self, inner, questions: list[tuple[str, int]]) -> None:
        self.inner = inner
        self.questions = sorted(questions, key=lambda question: question[1])  # (text, voiced frames)

    async def warm_up(self) -> None:
        await self.inner.warm_up()

    def open_stream(self, hotwords=()):
        return _KnownQuestionStream(self, self.inner.open_stream(hotwords))

    async def close(self) -> None:
        await self.inner.close()

    def closest(self, voiced_frames: int) -> str:
        return min(self.questions, key=lambda question: abs(question[1] - voiced_frames))[0]

    def partial(self, voiced_frames: int) -> str:
        longer = [question for question in self.questions if question[1] >= voiced_frames]
        text, total = longer[0] if longer else self.questions[-1]
        return text[: max(1, round(len(text) * min(1.0, voiced_frames / max(1, total))))]


class _KnownQuestionStream:
    def __init__(self, engine: KnownQuestionAsr, inner) -> None:
        self.engine = engine
        self.inner = inner
        self.voiced = 0

    async def push(self, pcm16: bytes):
        self.voiced += _voiced_frames(pcm16)
        await self.inner.push(pcm16)
        return Transcript(self.engine.partial(self.voiced), False) if self.voiced else None

    @property
    def capabilities(self) -> AsrCapabilities:
        # No speculative final: the known text is only right once the whole question was heard.
        return AsrCapabilities(speculative_final=False, expedite=self.inner.capabilities.expedite)

    def expedite(self) -> None:
        self.inner.expedite()

    async def finish(self):
        await self.inner.finish()
        text = self.engine.closest(self.voiced) if self.voiced else ""
        self.voiced = 0
        return Transcript(text, True)

    async def close(self) -> None:
        await self.inner.close()


def _voiced_frames(pcm16: bytes) -> int:
    return int(voiced_frames(pcm16).sum())


def serve_known_questions() -> None:
    """Server entry point for `--transcripts known` (settings from the environment)."""
    import uvicorn

    from telephony.web.app import create_app
    from telephony.app import build_asr
    from telephony.settings import Settings
    from voice.audio import ulaw_decode, ulaw_encode

    settings = Settings()
    questions = asyncio.run(synthesize_questions())
    # What the server hears went through G.711 on the way: count voiced frames on that.
    known = [(text, _voiced_frames(ulaw_decode(ulaw_encode(pcm)))) for text, pcm in zip(BENCH_QUESTIONS, questions)]

    engine = KnownQuestionAsr(build_asr(settings), known)
    uvicorn.run(create_app(settings, asr=engine), host=settings.host, port=settings.port, log_level="warning",
                ws_per_message_deflate=False)
