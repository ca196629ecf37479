"""baresip (Debian `baresip-core` 1.0.0) as a scripted SIP phone on 127.0.0.1.

Each `Baresip` gets a config dir of its own: it listens on `sip:<user>@127.0.0.1:<sip_port>`, sends a WAV file as its
microphone (aufile; 8 kHz S16 mono, padded with silence so that the call is not hung up at the end of the file unless
`hangup_at_eof`), records what it receives into `<dir>/rec/*-dec.wav` (sndfile) and is driven over ctrl_tcp
(netstring-framed JSON) on which baresip also pushes its events (CALL_ESTABLISHED, CALL_DTMF_START, CALL_CLOSED, ...).

baresip facts that shape this (research/telephony_sms.md §2a): `net_interface 127.0.0.1` (not `lo`) keeps the SDP on
loopback; SIP over TLS takes `sip_port + 1` even without a certificate, so two instances need ports at least 2 apart;
an incoming INVITE must name the account's user part or baresip answers 404; `stdio.so` is left out because it fails
with stdin on /dev/null; `-t` bounds the lifetime so a forgotten process always ends.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from tests.conftest import _free_port
from voice.audio import silence, write_wav
from voice.base import TELEPHONY_RATE_HZ

BARESIP_MODULE_PATH = Path("/usr/lib/baresip/modules")
START_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
RTP_PORT_SPAN = 40
PAD_SILENCE_S = 60


def baresip_binary() -> str | None:
    return shutil.which("baresip")


# --- ports -----------------------------------------------------------------------------------------------------------

def _bindable(port: int, kinds: tuple[int, ...] = (socket.SOCK_STREAM, socket.SOCK_DGRAM)) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_sip_port(span: int = 2) -> int:
    """A port p such that p .. p+span-1 are free on both UDP and TCP (baresip puts TLS on p+1)."""
    for _ in range(200):
        port = _free_port()
        if port + span < 65536 and all(_bindable(port + offset) for offset in range(span)):
            return port
    raise RuntimeError("no free SIP port pair on 127.0.0.1")


def free_rtp_range(span: int = RTP_PORT_SPAN) -> tuple[int, int]:
    """An even-based UDP port range below the ephemeral range (so that outgoing sockets do not land in it)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000 - span, 2)
        if all(_bindable(base + offset, (socket.SOCK_DGRAM,)) for offset in range(0, span, 7)):
            return base, base + span - 1
    raise RuntimeError("no free RTP port range on 127.0.0.1")


# --- audio helpers ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AudioStats:
    duration_s: float
    rms: float  # relative to full scale (0..1)
    rate_hz: int


def _wav_pcm16(data: bytes) -> tuple[bytes, int]:
    """Mono int16 PCM and rate of a PCM WAV, tolerating a data chunk whose size was never filled in (a file that is
    still being written or whose writer was killed)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    offset, channels, rate, bits = 12, 1, TELEPHONY_RATE_HZ, 16
    while offset + 8 <= len(data):
        chunk_id, size = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk_id == b"fmt ":
            _tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", data, offset + 8)
        elif chunk_id == b"data":
            end = len(data) if size == 0 else min(len(data), offset + 8 + size)
            body = data[offset + 8:end]
            if bits != 16:
                raise ValueError(f"expected 16-bit PCM, got {bits} bits")
            samples = np.frombuffer(body[:len(body) - len(body) % (2 * channels)], "<i2")
            if channels > 1:
                samples = samples.reshape(-1, channels).mean(axis=1).astype("<i2")
            return samples.tobytes(), rate
        offset += 8 + size + (size & 1)
    raise ValueError("WAV file has no data chunk")


def audio_stats(path: str | Path) -> AudioStats:
    """Duration in seconds and RMS (0..1 of full scale) of a 16-bit PCM WAV."""
    pcm16, rate = _wav_pcm16(Path(path).read_bytes())
    samples = np.frombuffer(pcm16, "<i2").astype(np.float64)
    rms = math.sqrt(float(np.mean(samples * samples))) / 32768.0 if samples.size else 0.0
    return AudioStats(duration_s=samples.size / rate, rms=rms, rate_hz=rate)


def tone_pcm16(seconds: float, frequency_hz: float = 440.0, level: float = 0.3,
               rate_hz: int = TELEPHONY_RATE_HZ) -> bytes:
    """A sine tone as int16 PCM: test audio that needs neither espeak-ng nor sox."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return np.rint(np.sin(2 * np.pi * frequency_hz * t) * level * 32767).astype("<i2").tobytes()


def make_wav_8k(dest: str | Path, text: str | None = None, source: str | Path | None = None,
                pad_s: float = 0.0) -> Path:
    """Write an 8 kHz S16 mono WAV (what baresip's aufile and the G.711 codecs need) to `dest`.

    From `text` spoken in Mandarin by espeak-ng (tests.voicefixtures), or from any `source` audio file converted by
    sox; either way followed by `pad_s` seconds of digital silence.
    """
    dest = Path(dest)
    if (text is None) == (source is None):
        raise ValueError("give exactly one of text or source")
    if text is not None:
        from tests.voicefixtures import synthesize_mandarin

        write_wav(dest, synthesize_mandarin(text) + silence(int(pad_s * 1000)))
        return dest
    sox = shutil.which("sox")
    if sox is None:
        raise RuntimeError("sox is not installed (apt-get install sox)")
    command = [sox, str(source), "-r", str(TELEPHONY_RATE_HZ), "-c", "1", "-b", "16", "-e", "signed-integer",
               str(dest)]
    if pad_s > 0:
        command += ["pad", "0", f"{pad_s:g}"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return dest


# --- ctrl_tcp client -------------------------------------------------------------------------------------------------

class CtrlError(RuntimeError):
    pass


class _CtrlClient:
    """baresip's ctrl_tcp: JSON objects in netstrings (`<len>:<json>,`) both ways. Commands carry a token that the
    response echoes; events arrive unasked on the same (single) connection."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        self._sock.settimeout(0.2)
        self._lock = threading.Condition()
        self._responses: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._closed = False
        self._tokens = 0
        self._reader = threading.Thread(target=self._read_loop, name=f"baresip-ctrl-{port}", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        buffer = b""
        while not self._closed:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            buffer += chunk
            while True:
                head, colon, rest = buffer.partition(b":")
                if not colon or not head.isdigit() or len(rest) < int(head) + 1:
                    break
                payload, buffer = rest[:int(head)], rest[int(head) + 1:]
                with suppress(ValueError):
                    self._dispatch(json.loads(payload))
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _dispatch(self, message: dict[str, Any]) -> None:
        with self._lock:
            if message.get("event"):
                message["received_at"] = time.monotonic()
                self.events.append(message)
            elif message.get("response"):
                self._responses[str(message.get("token", ""))] = message
            self._lock.notify_all()

    def command(self, name: str, params: str = "", timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        with self._lock:
            self._tokens += 1
            token = f"t{self._tokens}"
        payload = json.dumps({"command": name, "params": params, "token": token}).encode()
        self._sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
        deadline = time.monotonic() + timeout
        with self._lock:
            while token not in self._responses:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise CtrlError(f"no response to {name} {params!r} from baresip ctrl_tcp")
                self._lock.wait(remaining)
            response = self._responses.pop(token)
        if not response.get("ok", False):
            raise CtrlError(f"baresip refused {name} {params!r}: {response.get('data')!r}")
        return response

    def wait_event(self, kind: str, timeout: float) -> dict[str, Any]:
        """The oldest not yet returned event of type `kind`, waiting up to `timeout` seconds for one."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for index, event in enumerate(self.events):
                    if index not in self._consumed and event.get("type") == kind:
                        self._consumed.add(index)
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    seen = [event.get("type") for event in self.events]
                    raise TimeoutError(f"no {kind} event within {timeout} s (events so far: {seen})")
                self._lock.wait(remaining)

    def close(self) -> None:
        self._closed = True
        with suppress(OSError):
            self._sock.close()
        self._reader.join(2)


# --- the phone -------------------------------------------------------------------------------------------------------

class Baresip:
    """One baresip process with its own config dir under `root / name`; use as a context manager.

    `answermode` "auto" answers every INVITE for `user`, "manual" lets it ring (for CANCEL tests). `codecs` is the
    account's `audio_codecs` list ("PCMU", "PCMA", "PCMA,PCMU"). `source_wav` must be 8 kHz S16 mono; it is copied
    and padded with `pad_s` seconds of silence unless `hangup_at_eof`, in which case baresip hangs up when the file
    ends. Without a source a 440 Hz tone of 3 s is sent.
    """

    def __init__(self, root: str | Path, name: str = "peer", *, user: str = "hotline", answermode: str = "auto",
                 codecs: str = "PCMU", source_wav: str | Path | None = None, hangup_at_eof: bool = False,
                 pad_s: float = PAD_SILENCE_S, lifetime_s: int = 60, sip_trace: bool = False,
                 max_calls: int = 4) -> None:
        self.name = name
        self.dir = Path(root) / name
        self.user = user
        self.answermode = answermode
        self.codecs = codecs
        self.lifetime_s = lifetime_s
        self.sip_trace = sip_trace
        self.max_calls = max_calls
        self.sip_port = free_sip_port()
        self.ctrl_port = _free_port()
        self.rtp_range = free_rtp_range()
        self.rec_dir = self.dir / "rec"
        self.log_path = self.dir / "baresip.log"
        self.source_wav = self.dir / "source.wav"
        self._source = Path(source_wav) if source_wav is not None else None
        self._pad_s = 0.0 if hangup_at_eof else pad_s
        self.process: subprocess.Popen | None = None
        self._ctrl: _CtrlClient | None = None

    @property
    def uri(self) -> str:
        return f"sip:{self.user}@127.0.0.1:{self.sip_port}"

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self._ctrl.events) if self._ctrl else []

    # -- config -------------------------------------------------------------------------------------------------------

    def _write_source(self) -> None:
        if self._source is None:
            write_wav(self.source_wav, tone_pcm16(3.0) + silence(int(self._pad_s * 1000)))
            return
        pcm16, rate = _wav_pcm16(self._source.read_bytes())
        if rate != TELEPHONY_RATE_HZ:
            raise ValueError(f"{self._source}: aufile needs {TELEPHONY_RATE_HZ} Hz, got {rate} (see make_wav_8k)")
        write_wav(self.source_wav, pcm16 + silence(int(self._pad_s * 1000)))

    def write_config(self) -> None:
        self.rec_dir.mkdir(parents=True, exist_ok=True)
        self._write_source()
        settings = [
            ("poll_method", "epoll"),
            ("sip_listen", f"127.0.0.1:{self.sip_port}"),
            ("net_interface", "127.0.0.1"),
            ("call_local_timeout", "120"),
            ("call_max_calls", str(self.max_calls)),
            ("audio_player", "alsa,null"),
            ("audio_alert", "alsa,null"),
            ("audio_source", f"aufile,{self.source_wav}"),
            ("audio_level", "no"),
            ("ausrc_format", "s16"),
            ("auplay_format", "s16"),
            ("auenc_format", "s16"),
            ("audec_format", "s16"),
            ("audio_buffer", "20-160"),
            ("rtp_ports", f"{self.rtp_range[0]}-{self.rtp_range[1]}"),
            ("rtcp_mux", "no"),
            ("jitter_buffer_delay", "5-10"),
            ("module_path", str(BARESIP_MODULE_PATH)),
            ("module", "g711.so"),
            ("module", "sndfile.so"),
            ("module", "alsa.so"),
            ("module", "aufile.so"),
            ("module_tmp", "uuid.so"),
            ("module_tmp", "account.so"),
            ("module_app", "menu.so"),
            ("module_app", "ctrl_tcp.so"),
            ("ctrl_tcp_listen", f"127.0.0.1:{self.ctrl_port}"),
            ("snd_path", str(self.rec_dir)),
        ]
        (self.dir / "config").write_text("".join(f"{key}\t\t{value}\n" for key, value in settings))
        account = (f"<sip:{self.user}@127.0.0.1:{self.sip_port}>;regint=0;answermode={self.answermode};"
                   f"audio_codecs={self.codecs}\n")
        (self.dir / "accounts").write_text(account)
        (self.dir / "contacts").write_text("")

    # -- process ------------------------------------------------------------------------------------------------------

    def start(self) -> Baresip:
        binary = baresip_binary()
        if binary is None:
            raise RuntimeError("baresip is not installed (apt-get install baresip-core)")
        self.write_config()
        command = [binary, "-4", "-f", str(self.dir), "-t", str(self.lifetime_s)]
        if self.sip_trace:
            command.append("-s")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.dir, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"baresip {self.name} exited with {self.process.returncode}: {self.log()}")
                try:
                    self._ctrl = _CtrlClient(self.ctrl_port)
                    return self
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"baresip {self.name} ctrl_tcp did not open: {self.log()}") from None
                    time.sleep(0.05)  # waiting for a child process to bind its control socket
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close the control connection and end the process (SIGTERM, then SIGKILL)."""
        if self._ctrl is not None:
            self._ctrl.close()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL, as a crashed peer: no BYE, no un-registration."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- control ------------------------------------------------------------------------------------------------------

    def _client(self) -> _CtrlClient:
        if self._ctrl is None:
            raise RuntimeError(f"baresip {self.name} is not running")
        return self._ctrl

    def command(self, name: str, params: str = "") -> dict[str, Any]:
        """Any menu command by its long name (dial, accept, hangup, sndcode, transfer, answermode, ...)."""
        return self._client().command(name, params)

    def dial(self, uri: str) -> dict[str, Any]:
        return self.command("dial", uri)

    def accept(self) -> dict[str, Any]:
        return self.command("accept")

    def send_dtmf(self, digits: str) -> dict[str, Any]:
        """RFC 4733 telephone-events on the current call."""
        return self.command("sndcode", digits)

    def hangup(self) -> dict[str, Any]:
        return self.command("hangup")

    def transfer(self, uri: str) -> dict[str, Any]:
        """Blind transfer of the current call by REFER."""
        return self.command("transfer", uri)

    def wait_event(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The oldest event of type `kind` (CALL_INCOMING, CALL_RINGING, CALL_ESTABLISHED, CALL_CLOSED,
        CALL_DTMF_START, CALL_DTMF_END, TRANSFER, ...) not returned before; TimeoutError if none comes."""
        return self._client().wait_event(kind, timeout)

    def dtmf_digits(self) -> str:
        """Every digit received so far (CALL_DTMF_START events), in order."""
        return "".join(str(event.get("param", "")) for event in self.events if event.get("type") == "CALL_DTMF_START")

    def recordings(self) -> list[Path]:
        """The received-audio recordings (`*-dec.wav`, one per call), oldest first. Complete after CALL_CLOSED."""
        return sorted(self.rec_dir.glob("*-dec.wav"), key=lambda path: (path.stat().st_mtime, path.name))

    def wait_recordings(self, count: int = 1, timeout: float = 5.0) -> list[Path]:
        """Wait until at least `count` received-audio recordings exist and none has grown for 200 ms."""
        deadline = time.monotonic() + timeout
        previous: list[tuple[Path, int]] = []
        while True:
            current = [(path, path.stat().st_size) for path in self.recordings()]
            if len(current) >= count and current == previous:
                return [path for path, _size in current]
            if time.monotonic() > deadline:
                raise TimeoutError(f"baresip {self.name}: {len(current)} recordings, wanted {count}")
            previous = current
            time.sleep(0.2)  # waiting for sndfile to finish the files of closed calls

    def sent_recordings(self) -> list[Path]:
        return sorted(self.rec_dir.glob("*-enc.wav"), key=lambda path: (path.stat().st_mtime, path.name))

