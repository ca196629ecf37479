"""The real Kannel 1.4.5 (Debian packages kannel and kannel-extras) on 127.0.0.1 for a test: bearerbox with a
`fake` SMSC, fakesmsc as the network side (it prints every message it receives), and smsbox with a sendsms-user.

`start_kannel` writes kannel.conf with free ports into a directory, starts bearerbox, fakesmsc and smsbox in that
order, waits until the status page shows the SMSC online and the smsbox connected, and stops them all by PID on
failure; `Kannel.stop` does the same at the end. Each process runs under `timeout`, so none outlives `lifetime_s`
even when the test process dies. `parse_fakesmsc_log` and `reassemble` read what fakesmsc received.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes

BEARERBOX = Path("/usr/sbin/bearerbox")
SMSBOX = Path("/usr/sbin/smsbox")
FAKESMSC = Path("/usr/lib/kannel/test/fakesmsc")
STATUS_PASSWORD = "statuspw"
SENDER = "10655"
# fakesmsc's line for each MT message it receives (it logs them at debug level).
_GOT = re.compile(r"Got message \d+: <(.*)>\s*$", re.MULTILINE)


def missing_binaries() -> list[str]:
    return [str(path) for path in (BEARERBOX, SMSBOX, FAKESMSC) if not path.exists()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CONFIG = """\
group = core
admin-port = {admin_port}
admin-interface = 127.0.0.1
admin-password = {admin_password}
status-password = {status_password}
admin-allow-ip = "127.0.0.1"
smsbox-port = {smsbox_port}
smsbox-interface = 127.0.0.1
box-allow-ip = "127.0.0.1"
log-file = "{root}/bearerbox.log"
log-level = 0
access-log = "{root}/access.log"
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = FAKE
port = {fake_port}
our-host = 127.0.0.1
connect-allow-ip = 127.0.0.1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {smsbox_port}
sendsms-port = {sendsms_port}
sendsms-interface = 127.0.0.1
global-sender = {sender}
log-file = "{root}/smsbox.log"
log-level = 0
access-log = "{root}/smsbox-access.log"

group = sendsms-user
username = {username}
password = {password}
concatenation = true
max-messages = 10
user-allow-ip = "127.0.0.1"
"""


@dataclass(frozen=True)
class FakesmscMessage:
    """One MT message as fakesmsc printed it."""

    sender: str
    receiver: str
    kind: str  # text, data, ucs-2, udh…
    udh: bytes
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-16-be") if self.kind in ("ucs-2", "udh") else self.data.decode("latin-1")


def parse_fakesmsc_log(log: str) -> list[FakesmscMessage]:
    """fakesmsc's `Got message N: <…>` lines: `sender receiver udh <udh> data <data>` for a message with a UDH,
    `sender receiver ucs-2 <data>` or `… data <data>` (`%XX`-encoded) or `… text <plain text>` for one without."""
    messages = []
    for match in _GOT.finditer(log):
        sender, receiver, kind, rest = (match.group(1).split(" ", 3) + ["", "", "", ""])[:4]
        udh = b""
        if kind == "udh":
            encoded_udh, _, rest = rest.partition(" data ")
            udh = unquote_to_bytes(encoded_udh)
        data = rest.encode("latin-1") if kind == "text" else unquote_to_bytes(rest)
        messages.append(FakesmscMessage(sender, receiver, kind, udh, data))
    return messages


def reassemble(messages: list[FakesmscMessage]) -> list[str]:
    """Texts in order of their first part: a message without UDH as it is, concatenated parts (UDH IEI 0x00) joined
    by sequence number once every part has arrived."""
    texts: list[tuple[int, str]] = []
    groups: dict[tuple[str, int, int], dict[int, str]] = {}
    first: dict[tuple[str, int, int], int] = {}
    for index, message in enumerate(messages):
        udh = message.udh
        if not udh:
            texts.append((index, message.text))
            continue
        if udh[:3] != b"\x05\x00\x03":
            raise ValueError(f"no 8-bit concatenation element in UDH {udh.hex()}")
        key = (message.receiver, udh[3], udh[4])
        groups.setdefault(key, {})[udh[5]] = message.text
        first.setdefault(key, index)
    for key, parts in groups.items():
        if len(parts) == key[2]:
            texts.append((first[key], "".join(parts[seq] for seq in sorted(parts))))
    return [text for _, text in sorted(texts)]


@dataclass
class Kannel:
    root: Path
    sendsms_url: str
    admin_port: int
    sendsms_port: int
    username: str
    password: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def fakesmsc_log(self) -> Path:
        return self.root / "fakesmsc.log"

    def status_text(self) -> str:
        url = f"http://127.0.0.1:{self.admin_port}/status.txt?password={STATUS_PASSWORD}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode("utf-8", errors="replace")

    def received(self) -> list[FakesmscMessage]:
        return parse_fakesmsc_log(self.fakesmsc_log.read_text(encoding="latin-1"))

    def received_by(self, number: str) -> list[FakesmscMessage]:
        return [message for message in self.received() if message.receiver == number]

    def texts_to(self, number: str) -> list[str]:
        return reassemble(self.received_by(number))

    def logs(self, lines: int = 20) -> str:
        tails = []
        for name in ("bearerbox.log", "smsbox.log", "fakesmsc.log", "bearerbox.out", "smsbox.out"):
            path = self.root / name
            if path.exists():
                tail = path.read_text(encoding="latin-1").splitlines()[-lines:]
                tails.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(tails)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM to smsbox, fakesmsc and bearerbox (by PID), SIGKILL to any still running after `timeout_s`."""
        running = [p for p in reversed(self.processes.values()) if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for process in self.processes.values():
            if process.stdin is not None:
                process.stdin.close()


def start_kannel(root: Path, *, username: str = "hotline", password: str = "secret", lifetime_s: int = 300,
                 timeout_s: float = 20.0) -> Kannel:
    """Kannel on free loopback ports, configured in `root`, ready to take sendsms requests."""
    missing = missing_binaries()
    if missing:
        raise FileNotFoundError(f"Kannel binaries missing: {', '.join(missing)}")
    root.mkdir(parents=True, exist_ok=True)
    ports = {"admin_port": _free_port(), "smsbox_port": _free_port(), "fake_port": _free_port(),
             "sendsms_port": _free_port()}
    config = root / "kannel.conf"
    config.write_text(CONFIG.format(root=root, admin_password="adminpw", status_password=STATUS_PASSWORD,
                                    sender=SENDER, username=username, password=password, **ports), encoding="utf-8")
    kannel = Kannel(root=root, sendsms_url=f"http://127.0.0.1:{ports['sendsms_port']}/cgi-bin/sendsms",
                    admin_port=ports["admin_port"], sendsms_port=ports["sendsms_port"], username=username,
                    password=password)
    bounded = [shutil.which("timeout") or "timeout", "--kill-after=5", str(lifetime_s)]

    def spawn(name: str, command: list[str], output: Path, stdin: int | None = subprocess.DEVNULL) -> None:
        with output.open("wb") as sink:
            kannel.processes[name] = subprocess.Popen([*bounded, *command], stdin=stdin, stdout=sink,
                                                      stderr=subprocess.STDOUT, cwd=root)

    try:
        spawn("bearerbox", [str(BEARERBOX), "-v", "0", str(config)], root / "bearerbox.out")
        _wait(lambda: _listening(ports["fake_port"]) and _listening(ports["smsbox_port"]), timeout_s,
              "bearerbox to listen", kannel)
        # fakesmsc leaves when its stdin closes (it reads MO messages from it): keep a pipe open, write nothing.
        spawn("fakesmsc", [str(FAKESMSC), "-H", "127.0.0.1", "-r", str(ports["fake_port"]), "-i", "0.01", "-m", "0"],
              kannel.fakesmsc_log, stdin=subprocess.PIPE)
        spawn("smsbox", [str(SMSBOX), "-v", "0", str(config)], root / "smsbox.out")
        _wait(lambda: _ready(kannel), timeout_s, "the SMSC online and the smsbox connected", kannel)
        _wait(lambda: _listening(ports["sendsms_port"]), timeout_s, "smsbox's sendsms port", kannel)
    except BaseException:
        kannel.stop()
        raise
    return kannel


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ready(kannel: Kannel) -> bool:
    try:
        status = kannel.status_text()
    except (urllib.error.URLError, OSError):
        return False
    return "FAKE:" in status and "(online" in status and re.search(r"smsbox:.*on-line", status) is not None


def _wait(condition, timeout_s: float, what: str, kannel: Kannel) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        exited = {name: p.returncode for name, p in kannel.processes.items() if p.poll() is not None}
        if exited or time.monotonic() > deadline:
            reason = f"exited: {exited}" if exited else f"timed out after {timeout_s:g} s"
            raise RuntimeError(f"Kannel did not start ({reason}) waiting for {what}\n{kannel.logs()}")
        time.sleep(0.05)
