"""Kamailio (Debian `kamailio` 5.6) running deploy/kamailio/kamailio.cfg, the hotline's dispatcher, on 127.0.0.1.

The config file is used unedited: the listen socket, the dispatcher list, the control socket and the timers are
given as `-A` defines. `Kamailio` writes the dispatcher list for the given worker URIs, checks the config with
`kamailio -c` (raising with its output), starts kamailio attached (-DD, logging to stderr into a file), waits until its
control socket answers, and on exit ends it (SIGTERM, then SIGKILL of its whole process group).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path
from typing import Self

from tests.peers.baresip import free_sip_port

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
KAMAILIO_CFG = REPO_ROOT / "deploy" / "kamailio" / "kamailio.cfg"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None)


def kamcmd_binary() -> str | None:
    return shutil.which("kamcmd") or ("/usr/sbin/kamcmd" if os.access("/usr/sbin/kamcmd", os.X_OK) else None)


class KamailioError(RuntimeError):
    pass


class Kamailio:
    """The hotline dispatcher in front of `workers` (SIP URIs such as "sip:hotline@127.0.0.1:5070"), set 1.

    `ping_interval_s` is the OPTIONS probing period and `fr_timer_ms` how long a silent worker gets before the INVITE
    fails over (and before a probe counts as failed).
    """

    def __init__(self, root: str | Path, workers: list[str], *, name: str = "kamailio", ping_interval_s: int = 1,
                 fr_timer_ms: int = 1500, config: Path = KAMAILIO_CFG, extra_defines: tuple[str, ...] = ()) -> None:
        self.dir = Path(root) / name
        self.run_dir = self.dir / "run"
        self.workers = list(workers)
        self.port = free_sip_port(1)
        self.config = config
        self.list_path = self.dir / "dispatcher.list"
        self.ctl_socket = self.run_dir / "kamailio_ctl"
        self.pid_path = self.run_dir / "kamailio.pid"
        self.log_path = self.dir / "kamailio.log"
        self.ping_interval_s = ping_interval_s
        self.fr_timer_ms = fr_timer_ms
        self.extra_defines = extra_defines
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"sip:hotline@127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def defines(self) -> list[str]:
        values = [f"LISTEN=udp:127.0.0.1:{self.port}", f'DS_LIST="{self.list_path}"',
                  f'CTL_SOCKET="unix:{self.ctl_socket}"', f'DS_PING_FROM="sip:dispatcher@127.0.0.1:{self.port}"',
                  f"DS_PING_INTERVAL={self.ping_interval_s}", f"FR_TIMER_MS={self.fr_timer_ms}",
                  "FR_INV_TIMER_MS=30000", "CHILDREN=2", *self.extra_defines]
        return [argument for value in values for argument in ("-A", value)]

    def write_dispatcher_list(self) -> None:
        lines = ["# setid destination (written by tests/peers/kamailio.py)"]
        lines += [f"1 {uri}" for uri in self.workers]
        self.list_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Kamailio:
        binary = kamailio_binary()
        if binary is None:
            raise KamailioError("kamailio is not installed (apt-get install kamailio)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.write_dispatcher_list()
        check = subprocess.run([binary, "-c", "-f", str(self.config), *self.defines()], check=False,
                               capture_output=True,
                               timeout=30, stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            output = (check.stdout + check.stderr).decode(errors="replace")
            raise KamailioError(f"kamailio -c rejected {self.config}:\n{output}")
        command = [binary, "-f", str(self.config), "-DD", "-E", "-Y", str(self.run_dir), "-P", str(self.pid_path),
                   "-m", "64", "-M", "8", *self.defines()]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.dir, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise KamailioError(f"kamailio exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if self.ctl_socket.exists():
                try:
                    self.rpc("core.uptime")
                    return
                except KamailioError:
                    pass
            if time.monotonic() > deadline:
                raise KamailioError(f"kamailio did not come up:\n{self.log()[-4000:]}")
            time.sleep(0.1)  # waiting for a child process to create its control socket

    def stop(self) -> None:
        """SIGTERM to kamailio's process group (the creator stops its children), SIGKILL to the group if it lingers.
        The group is signalled only while its leader, our child, is not yet reaped, so the id cannot be reused."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- control ------------------------------------------------------------------------------------------------------

    def rpc(self, *command: str, timeout: float = 5.0) -> str:
        binary = kamcmd_binary()
        if binary is None:
            raise KamailioError("kamcmd is not installed (it comes with the kamailio package)")
        try:
            completed = subprocess.run([binary, "-s", f"unix:{self.ctl_socket}", *command], check=False,
                                       capture_output=True,
                                       timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as expired:
            raise KamailioError(f"kamcmd {' '.join(command)} timed out") from expired
        output = (completed.stdout + completed.stderr).decode(errors="replace")
        if completed.returncode != 0 or output.startswith("error"):
            raise KamailioError(f"kamcmd {' '.join(command)} failed: {output}")
        return output

    def dispatcher_list(self) -> dict[str, str]:
        """Destination URI -> dispatcher flags ("AP" active+probing, "IP" inactive+probing, "DX" disabled, ...)."""
        output = self.rpc("dispatcher.list")
        return dict(re.findall(r"URI:\s*(\S+)\s+FLAGS:\s*(\S+)", output))

    def wait_flags(self, uri: str, prefix: str, timeout: float = 10.0) -> dict[str, str]:
        """Wait until `uri`'s flags start with `prefix` ("A" active, "I" inactive); returns the whole list."""
        deadline = time.monotonic() + timeout
        while True:
            destinations = self.dispatcher_list()
            if destinations.get(uri, "").startswith(prefix):
                return destinations
            if time.monotonic() > deadline:
                raise TimeoutError(f"{uri} flags did not become {prefix}* within {timeout} s: {destinations}")
            time.sleep(0.2)  # polling kamailio's dispatcher state

    def reload(self) -> None:
        """Re-read the dispatcher list file (after changing `workers` and calling write_dispatcher_list)."""
        self.rpc("dispatcher.reload")

