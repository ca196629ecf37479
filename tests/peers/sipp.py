"""SIPp (Debian `sip-tester` 3.6.1) run in the foreground on 127.0.0.1 with a scenario from tests/sipp/.

`run_sipp` returns the exit code, the successful / failed call counts from the `-trace_stat` CSV, the whole last
statistics row, the `<log>` lines of the scenario (`-trace_logs`) and the unexpected messages (`-trace_err`).
SIPp exit codes: 0 every call succeeded, 1 at least one failed, 97 stopped by an internal command, 99 normal exit
without any call processed, 255/254 (-1/-2) fatal error (e.g. cannot bind).
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.baresip import free_rtp_range, free_sip_port

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "sipp"
ALAW_FILE = "pcma.alaw"  # invite_pcma.xml streams this file from SIPp's working directory


def sipp_binary() -> str | None:
    return shutil.which("sipp")


def scenario(name: str) -> Path:
    """Path of tests/sipp/<name>.xml."""
    path = SCENARIO_DIR / (name if name.endswith(".xml") else f"{name}.xml")
    if not path.exists():
        raise FileNotFoundError(path)
    return path


def make_alaw(wav: str | Path, dest: str | Path) -> Path:
    """Headerless 8 kHz mono G.711 a-law (what SIPp's rtp_stream with payload 8 sends) from any audio file, by sox."""
    sox = shutil.which("sox")
    if sox is None:
        raise RuntimeError("sox is not installed (apt-get install sox)")
    subprocess.run([sox, str(wav), "-t", "raw", "-r", "8000", "-c", "1", "-e", "a-law", str(dest)], check=True,
                   capture_output=True, timeout=60)
    return Path(dest)


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    stats: dict[str, str]  # the last row of the -trace_stat CSV
    output: str  # SIPp's stdout and stderr
    log_lines: list[str] = field(default_factory=list)  # the scenario's <log> actions
    errors: str = ""  # -trace_err: unexpected messages
    workdir: Path | None = None

    def count_logs(self, prefix: str) -> int:
        """How many <log> lines start with `prefix` (e.g. "ANSWERED", "REJECTED 486")."""
        return sum(1 for line in self.log_lines if line.startswith(prefix))

    def describe(self) -> str:
        return (f"sipp exit {self.returncode}, {self.successful} ok, {self.failed} failed\n"
                f"--- output ---\n{self.output[-3000:]}\n--- errors ---\n{self.errors[-3000:]}")


def _parse_stats(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    return {key: value for key, value in zip(rows[0], rows[-1], strict=False) if key}


def _count(stats: dict[str, str], key: str) -> int:
    try:
        return int(float(stats.get(key, "0") or 0))
    except ValueError:
        return 0


def run_sipp(scenario_file: str | Path, target: str, workdir: str | Path, *, service: str = "hotline",
             calls: int = 1, limit: int | None = None, rate: float | None = None, rate_period_ms: int | None = None,
             call_duration_ms: int | None = None, timeout_s: float = 30.0, keys: dict[str, str] | None = None,
             extra_args: tuple[str, ...] = (), trace_msg: bool = True) -> SippResult:
    """Run SIPp in the foreground against `target` ("127.0.0.1:5060"), `calls` calls at most `limit` at a time.

    SIPp quits after `timeout_s` (-timeout with -timeout_error, counting as a failure); the subprocess gets a few
    seconds more before it is killed. Every trace file lands in `workdir`, which is also SIPp's working directory (so
    relative media files such as pcma.alaw are found there).
    """
    binary = sipp_binary()
    if binary is None:
        raise RuntimeError("sipp is not installed (apt-get install sip-tester)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stat_file, log_file, error_file = workdir / "stat.csv", workdir / "logs.log", workdir / "errors.log"
    for stale in (stat_file, log_file, error_file):
        stale.unlink(missing_ok=True)
    media_port = free_rtp_range(span=4 * max(calls, 1) + 4)[0]
    command = [binary, target, "-sf", str(Path(scenario_file).resolve()), "-s", service,
               "-i", "127.0.0.1", "-p", str(free_sip_port(1)), "-mi", "127.0.0.1", "-mp", str(media_port),
               "-m", str(calls), "-l", str(limit if limit is not None else calls),
               "-timeout", f"{timeout_s:g}s", "-timeout_error", "-max_retrans", "5",
               "-nostdin", "-fd", "1",
               "-trace_stat", "-stf", str(stat_file),
               "-trace_err", "-error_file", str(error_file),
               "-trace_logs", "-log_file", str(log_file)]
    if trace_msg:
        command += ["-trace_msg", "-message_file", str(workdir / "messages.log")]
    if rate is not None:
        command += ["-r", f"{rate:g}"]
    if rate_period_ms is not None:
        command += ["-rp", str(rate_period_ms)]
    if call_duration_ms is not None:
        command += ["-d", str(call_duration_ms)]
    for key, value in (keys or {}).items():
        command += ["-key", key, value]
    command += list(extra_args)
    try:
        completed = subprocess.run(command, check=False, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True,
                                   timeout=timeout_s + 15)
        returncode, output = completed.returncode, (completed.stdout + completed.stderr).decode(errors="replace")
    except subprocess.TimeoutExpired as expired:  # subprocess.run has killed it
        returncode = -9
        output = ((expired.stdout or b"") + (expired.stderr or b"")).decode(errors="replace") + "\n[killed]"
    stats = _parse_stats(stat_file)
    log_lines = log_file.read_text(errors="replace").splitlines() if log_file.exists() else []
    return SippResult(returncode=returncode, successful=_count(stats, "SuccessfulCall(C)"),
                      failed=_count(stats, "FailedCall(C)"), stats=stats, output=output,
                      log_lines=[line.strip() for line in log_lines if line.strip()],
                      errors=error_file.read_text(errors="replace") if error_file.exists() else "", workdir=workdir)
