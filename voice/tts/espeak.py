"""The offline fallback voice: espeak-ng run as a subprocess per utterance, its WAV output streamed as 8 kHz PCM."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator

from voice.base import AudioFormatError, TtsUnavailable
from voice.tts.speech_text import normalize_text_for_speech
from voice.tts.wav import WavStreamToTelephonyPcm

ESPEAK_INSTALL_HINT = "apt-get install espeak-ng"
_STDOUT_READ_BYTES = 8192
_REAP_LIMIT_S = 5.0  # a killed espeak-ng's last output read and its exit awaited, each at most this long


class EspeakTtsEngine:
    """Offline fallback: espeak-ng (formant synthesis, robotic but intelligible) run as a subprocess per utterance."""

    name = "espeak"

    def __init__(self, voice: str = "cmn-latn-pinyin", speed_wpm: int = 200, binary: str = "espeak-ng") -> None:
        # Debian 12's espeak-ng 1.51 reads hanzi as English-spelled pinyin with "-v cmn"; cmn-latn-pinyin has tones right.
        self.voice, self.speed_wpm, self.binary = voice, speed_wpm, binary
        self.rate = f"{speed_wpm}wpm"

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        spoken = normalize_text_for_speech(text)
        if not spoken:
            return
        executable = shutil.which(self.binary)
        if executable is None:
            raise TtsUnavailable(f"espeak-ng binary {self.binary!r} not found; install it with: {ESPEAK_INSTALL_HINT}")
        try:
            process = await asyncio.create_subprocess_exec(
                executable, "-v", self.voice, "-s", str(self.speed_wpm), "--stdout",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as error:
            raise TtsUnavailable(f"cannot start {executable}: {error}; install it with: {ESPEAK_INSTALL_HINT}") from error
        stderr_reader = asyncio.ensure_future(process.stderr.read())
        try:
            process.stdin.write(spoken.encode("utf-8"))  # buffered by the transport: no deadlock with a full stdout pipe
            process.stdin.close()
            converter = WavStreamToTelephonyPcm()
            while data := await process.stdout.read(_STDOUT_READ_BYTES):
                if pcm := converter.feed(data):
                    yield pcm
            return_code = await process.wait()
            errors = (await stderr_reader).decode("utf-8", "replace").strip()
            if return_code != 0:
                raise TtsUnavailable(f"espeak-ng exited with {return_code} (voice {self.voice!r}): {errors[:200]}")
            if tail := converter.feed(b"", last=True):
                yield tail
        except AudioFormatError as error:
            raise TtsUnavailable(f"espeak-ng output unreadable (voice {self.voice!r}): {error}") from error
        finally:
            if process.returncode is None:
                process.kill()
            # Read what the process wrote and nobody took (a reply cut short) to the end of the file before waiting:
            # before Python 3.12, Process.wait() returns only once every pipe is closed, and a pipe left full of
            # unread audio is paused and never closes: the wait, the pipe and the socket pair behind it were kept for
            # ever, one per cut reply.
            with contextlib.suppress(OSError, ValueError, asyncio.TimeoutError):
                await asyncio.wait_for(process.stdout.read(), _REAP_LIMIT_S)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), _REAP_LIMIT_S)
            stderr_reader.cancel()
