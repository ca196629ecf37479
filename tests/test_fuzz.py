"""Each wire parser's atheris harness (tests/fuzz/) runs a few seconds from its seed corpus: it must end by itself
with exit code 0 and leave no crash file. A crash found here becomes a plain test in
tests/test_wire_parsers_regressions.py; docs/fuzzing.md says how to fuzz for longer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
HARNESSES = sorted(path.stem.removeprefix("fuzz_") for path in FUZZ.glob("fuzz_*.py"))
SECONDS_EACH = 4  # 8 harnesses: about 40 s of fuzzing in all, plus interpreter start-up
GUARD_S = 60  # `timeout` ends a harness that does not stop by itself (libFuzzer stalls on a mutator exception)


def test_every_harness_has_a_seed_corpus() -> None:
    assert HARNESSES == ["audiosocket", "funasr", "media_stream", "sip_headers", "smpp_pdu", "smpp_receipt",
                         "sms_reports", "wav"]
    for name in HARNESSES:
        seeds = list((FUZZ / "corpus" / name).iterdir())
        assert seeds and all(0 < seed.stat().st_size <= 2048 for seed in seeds), name


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_finds_no_crash(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / name, corpus)
    command = ["timeout", "-k", "5", str(GUARD_S), sys.executable, str(FUZZ / f"fuzz_{name}.py"),
               f"-max_total_time={SECONDS_EACH}", "-rss_limit_mb=1024", "-max_len=16384", "-timeout=10",
               f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(corpus)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, errors="replace")
    log = result.stdout + result.stderr
    crashes = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(("crash-", "timeout-", "oom-")))
    assert result.returncode == 0 and not crashes, f"{name}: exit {result.returncode}, {crashes}\n{log[-4000:]}"
    assert "Done" in log and "stat::number_of_executed_units" in log, log[-2000:]
    runs = int(log.split("stat::number_of_executed_units:")[1].split()[0])
    assert runs > len(list((FUZZ / "corpus" / name).iterdir())), f"{name} ran only {runs} inputs"
