"""Shared fixtures: settings in a temporary data dir, SQLite and a throwaway PostgreSQL cluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from telephony.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The ASR final's deadline (HOTLINE_ASR_FINAL_DEADLINE_MS, 1300 ms from the caller's last words) turns a final that is
# merely slow into 「请您再说一遍」. On a CI machine running two test workers, real SIP peers and servers on two cores,
# the tiny test model's finals are at times that slow, and a call under test would take another path than the one it
# tests. Servers started by the tests (in process or as child processes) give the final 4 s; the deadline itself is
# tested in tests/test_speech_session.py, and `hotline bench faults` measures the default.
TEST_ASR_FINAL_DEADLINE_MS = 4000
os.environ.setdefault("HOTLINE_ASR_FINAL_DEADLINE_MS", str(TEST_ASR_FINAL_DEADLINE_MS))
REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def office_calendar(path: Path, hours: list[str]) -> Path:
    """The shipped office-hours calendar with the weekly hours replaced: every day `hours`, no holidays."""
    shipped = Path(__file__).resolve().parent.parent / "kb" / "office_hours.yaml"
    data = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    data["weekly"] = {day: list(hours) for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    data["unverified"] = []
    data.pop("confirm", None)
    for year in (2025, 2026, 2027, 2028):  # whatever year CI runs in, the calendar knows it
        data["years"].setdefault(year, {"published": True, "holidays": [], "working_days": []})
        data["years"][year]["published"] = True
        data["years"][year]["holidays"] = []
        data["years"][year]["working_days"] = []
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return candidates[0].parent if candidates else None


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("HOTLINE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    # No ASR model on disk (fails fast instead of trying a hub download) and no TTS prerender: text-only tests
    # do not pay for voice engines; the voice tests configure their own.
    return Settings(data_dir=tmp_path / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                    asr_model=str(tmp_path / "no-asr-model"), tts_prerender=False, tts_engine="espeak",
                    asr_final_deadline_ms=TEST_ASR_FINAL_DEADLINE_MS)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own on 127.0.0.1, started for the session and removed after it.

    HOTLINE_TEST_POSTGRES_URL points the tests at an existing server instead.
    """
    existing = os.environ.get("HOTLINE_TEST_POSTGRES_URL")
    if existing:
        yield existing
        return
    bin_dir = _postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing; scripts/setup.sh test installs them")
        pytest.skip("PostgreSQL server not installed (scripts/setup.sh test installs it)")
    root = Path(tempfile.mkdtemp(prefix="hotline-pg-"))
    data = root / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, user="postgres")
        root.chmod(0o700)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "hotline", "-E", "UTF8",
                    "--locale=C.UTF-8"], check=True, capture_output=True)
    subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                    "-o", f"-h 127.0.0.1 -p {port} -k {root} -F", "start"], check=True, capture_output=True)
    try:
        url = f"postgresql+psycopg://hotline@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        import psycopg

        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={port} user=hotline dbname=postgres").close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> str:
    """An empty database on the session's server, so each test migrates from nothing."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(postgres_url)
    name = f"t_{os.urandom(6).hex()}"
    with psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database,
                         autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return parsed.set(database=name).render_as_string(hide_password=False)
