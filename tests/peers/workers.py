"""Hotline worker processes for the multi-worker SIP tests: each a real server (`serve_known_questions`: the
tiny FunASR model decodes, the known benchmark question is the transcript) with its SIP line on its own port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import _free_port

READY_TIMEOUT_S = 180


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    http_port: int
    sip_port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def uri(self) -> str:
        return f"sip:hotline@127.0.0.1:{self.sip_port}"

    def readiness(self) -> dict:
        return httpx.get(f"{self.base}/readyz", timeout=5).json()

    def sip_line(self) -> dict:
        return self.readiness().get("voice", {}).get("lines", {}).get("sip", {})

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited: {self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                voice = self.readiness().get("voice", {})
                if voice.get("asr") == "ready" and voice.get("lines", {}).get("sip", {}).get("state") == "listening":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)  # polling a child process that is loading its engines
        raise AssertionError(f"worker {self.name} did not become ready: {self.log_path.read_text(errors='replace')}")

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to hang up or close its call records."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_worker(name: str, root: Path, database_url: str, asr_model: Path, rtp_port: int,
                 extra_env: dict[str, str] | None = None) -> Worker:
    workdir = root / name
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, sip_port = _free_port(), _free_port()
    env = {**os.environ, "HOTLINE_DATA_DIR": str(workdir / "var"), "HOTLINE_DATABASE_URL": database_url,
           "HOTLINE_ASR_MODEL": str(asr_model), "HOTLINE_TTS_ENGINE": "espeak", "HOTLINE_TTS_PRERENDER": "false",
           "HOTLINE_KB_WATCH": "false", "HOTLINE_LOG_LEVEL": "WARNING", "HOTLINE_HOST": "127.0.0.1",
           "HOTLINE_PORT": str(http_port), "HOTLINE_SIP_ENABLED": "true", "HOTLINE_SIP_HOST": "127.0.0.1",
           "HOTLINE_SIP_PORT": str(sip_port), "HOTLINE_SIP_RTP_PORT": str(rtp_port),
           "HOTLINE_SIP_RTP_PORT_RANGE": "200", "HOTLINE_CENTRE_PHONE": "0773-0000000",
           "HOTLINE_SMS_SIGNATURE": "测试社保", **(extra_env or {})}
    log_path = workdir / "worker.log"
    command = [sys.executable, "-c", "from telephony.bench.known_questions import serve_known_questions as s; s()"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    return Worker(name, process, http_port, sip_port, log_path)
