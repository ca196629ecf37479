"""The SIP line's settings as the engines receive them (a plain dataclass: engine processes import nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass, replace

# PyPI's pjsua2 wheels are built with PJSUA_MAX_CALLS = 4, pjsua's compile-time default: one endpoint (one process)
# holds at most 4 calls. The line runs as many engine processes as its capacity needs.
CALLS_PER_ENGINE = 4


@dataclass(frozen=True)
class SipConfig:
    host: str = "127.0.0.1"
    port: int = 5060
    transport: str = "udp"
    public_address: str | None = None
    rtp_port: int = 40000
    rtp_port_range: int = 1000
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    max_calls: int = 8
    user: str = "hotline"
    mode: str = "trunk"  # or "register"
    registrar: str | None = None
    auth_user: str | None = None
    password: str | None = None
    realm: str = "*"
    register_expires_s: int = 300
    transfer_mode: str = "refer"  # or "bridge"
    ring_ms: int = 0  # 180 Ringing this long before 200 OK
    pjsip_log_level: int = 1

    @property
    def engines(self) -> int:
        if self.mode == "register":
            return 1  # one registered contact: several would make the PBX ring them all
        return -(-self.max_calls // CALLS_PER_ENGINE)

    def for_engine(self, index: int) -> SipConfig:
        """Engine `index` listens on port + index, with its own slice of the RTP range and its share of the calls."""
        count = self.engines
        share = self.rtp_port_range // count
        calls = min(CALLS_PER_ENGINE, self.max_calls - index * CALLS_PER_ENGINE)
        return replace(self, port=self.port + index, rtp_port=self.rtp_port + index * share, rtp_port_range=share,
                       max_calls=max(1, calls))

    @property
    def ports(self) -> str:
        last = self.port + self.engines - 1
        return f"{self.port}" if last == self.port else f"{self.port}-{last}"
