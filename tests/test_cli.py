"""The `hotline` command as a user runs it: ask (argument and stdin, JSON lines), kb check, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HOTLINE = [sys.executable, "-m", "telephony.cli"]


def run(args: list[str], tmp_path: Path, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("HOTLINE_")}
    environment |= {"HOTLINE_DATA_DIR": str(tmp_path / "var"), "HOTLINE_CENTRE_PHONE": "0773-0000000", **env}
    return subprocess.run(
        [*HOTLINE, *args], input=stdin, capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=120
    )


def test_ask_json_reads_one_question_per_line_and_answers_in_order(tmp_path: Path) -> None:
    result = run(["ask", "--json"], tmp_path, stdin="社保卡丢了怎么办\n\n转人工\n")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["question"] for line in lines] == ["社保卡丢了怎么办", "", "转人工"]
    assert lines[0]["action"] == "answer" and lines[0]["items"][0] == "card-loss-report"
    assert lines[0]["sms"].endswith("咨询电话：0773-0000000【桂林社保】")
    assert lines[1] == {"question": "", "error": "question is empty"}
    assert lines[2]["action"] == "handoff"


def test_ask_argument_prints_a_readable_answer_and_stores_the_turn(tmp_path: Path) -> None:
    result = run(["ask", "社保卡丢了怎么办"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("问：社保卡丢了怎么办\n答（answer，")
    assert "短信：" in result.stdout
    from telephony.store import Database

    database = Database(f"sqlite:///{tmp_path / 'var' / 'hotline.db'}")
    calls = database.recent_calls()
    assert [call.channel.value for call in calls] == ["cli"]
    database.close()


def test_empty_question_argument_fails_with_a_clear_message(tmp_path: Path) -> None:
    result = run(["ask", "  "], tmp_path)
    assert result.returncode == 1
    assert "错误：question is empty" in result.stderr


def test_bad_configuration_is_reported_not_raised(tmp_path: Path) -> None:
    result = run(["ask", "社保卡"], tmp_path, HOTLINE_CENTRE_PHONE="not a number")
    assert result.returncode == 2
    assert "configuration error: HOTLINE_CENTRE_PHONE" in result.stderr
    assert "Traceback" not in result.stderr


def test_kb_check_json_reports_counts(tmp_path: Path) -> None:
    result = run(["kb", "check", "--json"], tmp_path)
    report = json.loads(result.stdout)
    assert set(report) >= {"items", "errors", "warnings", "characters", "categories", "unverified"}
    assert report["items"] >= 1 and report["characters"] > 1000
    assert result.returncode == (0 if not report["errors"] else 1)


def test_kb_check_flags_a_broken_item(tmp_path: Path) -> None:
    items = tmp_path / "items"
    items.mkdir()
    (items / "broken.md").write_text("---\nid: Bad Id\n---\n", encoding="utf-8")
    result = run(["kb", "check", "--dir", str(items)], tmp_path)
    assert result.returncode == 1
    assert "broken.md: id: Value error, id must be lowercase kebab-case" in result.stdout


@pytest.mark.parametrize("command", [["--help"], ["kb", "--help"]])
def test_help_lists_the_commands(tmp_path: Path, command: list[str]) -> None:
    result = run(command, tmp_path)
    assert result.returncode == 0
    assert ("serve" in result.stdout and "ask" in result.stdout) or "check" in result.stdout


def test_asr_capacity_without_a_model_fails_with_a_clear_message(tmp_path: Path) -> None:
    result = run(["bench", "asr-capacity", "--model", str(tmp_path / "missing"), "--streams", "1"], tmp_path)
    assert result.returncode == 2
    assert f"cannot measure: ASR model directory {tmp_path / 'missing'} does not exist" in result.stderr


def test_tune_to_an_unwritable_place_fails_with_a_clear_message(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "calibration.json"
    result = run(["tune", "--folds", "2", "--no-vectors", "--output", str(target), "--json"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("cannot tune: ") and "no-such-dir" in result.stderr


def test_tune_writes_to_the_data_dir_and_the_next_kb_build_takes_it(tmp_path: Path) -> None:
    from kb.builds import DEFAULT_CALIBRATION_FILE
    from tests.kbfixtures import make_tunable_kb

    items = make_tunable_kb(tmp_path / "items")
    shipped = DEFAULT_CALIBRATION_FILE.read_bytes()
    tuned = run(["tune", "--folds", "2", "--no-vectors"], tmp_path, HOTLINE_KB_DIR=str(items))
    assert tuned.returncode == 0, tuned.stderr
    written = tmp_path / "var" / "calibration.json"
    assert json.loads(tuned.stdout)["written"] == str(written)
    assert f"calibration written to {written}; `hotline kb build` puts it into the next build" in tuned.stderr
    assert DEFAULT_CALIBRATION_FILE.read_bytes() == shipped  # the source tree is never written

    built = run(["kb", "build", "--no-progress"], tmp_path, HOTLINE_KB_DIR=str(items))
    assert built.returncode == 0, built.stderr
    assert f"calibration {written}; published" in built.stdout
    builds = tmp_path / "var" / "kb-builds"
    version = (builds / "CURRENT").read_text(encoding="utf-8").strip()
    assert (builds / version / "calibration.json").read_bytes() == written.read_bytes()


def test_kb_build_refuses_a_calibration_that_does_not_load(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "calibration.json").write_text("{}", encoding="utf-8")
    result = run(["kb", "build", "--no-progress"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"not built: calibration {tmp_path / 'var' / 'calibration.json'} was fitted on ")
    assert not (tmp_path / "var" / "kb-builds").exists()


def test_turn_latency_bench_removes_its_folder_even_when_the_run_fails(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from telephony.bench import turn_latency as bench_turns

    monkeypatch.setattr(bench_turns.tempfile, "tempdir", str(tmp_path))
    folders: list[Path] = []

    def failing_run(workdir: Path, *args) -> dict:
        folders.append(workdir)
        (workdir / "bench.db").write_bytes(b"x")
        raise RuntimeError("server did not become ready")

    monkeypatch.setattr(bench_turns, "_run_in", failing_run)
    with pytest.raises(RuntimeError, match="did not become ready"):
        bench_turns.run_turn_latency()
    assert folders and not folders[0].exists()

    monkeypatch.setattr(bench_turns, "_run_in", lambda workdir, *args: {"p50_ms": 1.0})
    kept = bench_turns.run_turn_latency(keep_workdir=True)
    assert Path(kept["workdir"]).is_dir() and kept["p50_ms"] == 1.0
