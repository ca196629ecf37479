"""Creating a pjsua2 endpoint without PJSIP writing to standard output: its start-up lines are moved to standard
error, and everything it logs afterwards goes to Python logging (`pjsip` logger) through a `LogWriter`."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

log = logging.getLogger("pjsip")
_stdout_lock = threading.Lock()

try:
    import pjsua2 as pj
except ImportError:  # pragma: no cover - setup installs it
    pj = None  # type: ignore[assignment]

# PJSIP levels: 1 error, 2 warning, 3 info, 4-6 debug.
_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}


@contextlib.contextmanager
def _stdout_to_stderr():
    """pj_init() logs a few lines to fd 1 before any log setting applies; a `--json` command must print JSON only."""
    with _stdout_lock:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            os.dup2(2, 1)
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


if pj is not None:

    class _PythonLogWriter(pj.LogWriter):
        def write(self, entry) -> None:
            log.log(_LEVELS.get(entry.level, logging.DEBUG), "%s", entry.msg.rstrip())


def create_endpoint(endpoint_class=None):
    """A created (not yet initialised) endpoint, of `endpoint_class` (a `pj.Endpoint` subclass) if given; call
    `configure_logging(ep_config, level)` before libInit."""
    if pj is None:
        raise RuntimeError("pjsua2 is not installed (pip install pjsua2-python)")
    endpoint = (endpoint_class or pj.Endpoint)()
    with _stdout_to_stderr():
        endpoint.libCreate()
    return endpoint


def configure_logging(ep_config, level: int) -> object:
    """Route PJSIP's log (up to `level`) to Python logging; returns the writer, which the caller must keep alive."""
    writer = _PythonLogWriter()
    ep_config.logConfig.writer = writer
    ep_config.logConfig.level = level
    ep_config.logConfig.consoleLevel = level
    ep_config.logConfig.decor = 0  # the message alone: Python logging adds time and level
    return writer
