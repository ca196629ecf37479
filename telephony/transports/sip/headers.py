"""What the SIP line reads from a request's headers (caller ID) and how it names a transfer target: pure functions."""

from __future__ import annotations

import re
from urllib.parse import unquote

# The URI inside a name-addr (`"Name" <sip:user@host>;tag=…`) or a bare addr-spec (`sip:user@host;tag=…`).
_NAME_ADDR = re.compile(r"<\s*([^>]+?)\s*>")
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*:\s*(.*)$")
# RFC 3261 compact forms that can carry a caller: f = From.
_COMPACT = {"f": "from"}
_WITHHELD = {"anonymous", "unknown", "unavailable", "restricted", "private", "withheld"}


def header_values(message: str, name: str) -> list[str]:
    """Every value of header `name` (case-insensitive, compact form and folded lines understood) in a SIP message."""
    wanted = name.lower()
    values: list[str] = []
    head = message.replace("\r\n", "\n").split("\n\n", 1)[0]
    lines = head.split("\n")[1:]  # past the request or status line
    current: list[str] | None = None
    for line in lines:
        if line[:1] in (" ", "\t") and current is not None:  # a folded continuation line
            current[-1] += " " + line.strip()
            continue
        match = _HEADER_LINE.match(line)
        if not match:
            current = None
            continue
        header = match.group(1).lower()
        header = _COMPACT.get(header, header)
        if header == wanted:
            values.append(match.group(2).strip())
            current = values
        else:
            current = None
    return values


def uri_of(value: str) -> str:
    """The URI in a From / P-Asserted-Identity value, without display name or header parameters."""
    match = _NAME_ADDR.search(value)
    if match:
        return match.group(1)
    return value.split(";", 1)[0].strip()


def number_of(uri: str) -> str | None:
    """The caller's number in a sip:/sips:/tel: URI: the user part with visual separators removed, or None when the
    number is withheld or is not a phone number (an extension name such as `alice` is kept as given)."""
    uri = uri.strip()
    scheme, _, rest = uri.partition(":")
    scheme = scheme.lower()
    if scheme == "tel":
        user = rest.split(";", 1)[0]
    elif scheme in ("sip", "sips"):
        if "@" not in rest:
            return None  # sip:host has no user part
        user = rest.split("@", 1)[0].split(";", 1)[0].split(":", 1)[0]
    else:
        return None
    user = unquote(user).strip()
    if not user or user.lower() in _WITHHELD:
        return None
    compact = re.sub(r"[\s\-.()]", "", user)
    if re.fullmatch(r"\+?[0-9*#]+", compact):
        return compact
    return user


def caller_id(invite: str) -> str | None:
    """Who is calling: the first P-Asserted-Identity that names a number (a trunk's verified identity, RFC 3325),
    else the From header; None when withheld."""
    for value in header_values(invite, "p-asserted-identity"):
        for part in _split_identities(value):
            number = number_of(uri_of(part))
            if number is not None:
                return number
    for value in header_values(invite, "from"):
        return number_of(uri_of(value))
    return None


def _split_identities(value: str) -> list[str]:
    # P-Asserted-Identity may list a sip: and a tel: identity separated by a comma outside angle brackets.
    parts, depth, start = [], 0, 0
    for index, char in enumerate(value):
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(value[start:index])
            start = index + 1
    parts.append(value[start:])
    return [part.strip() for part in parts if part.strip()]


def transfer_uri(target: str, peer_uri: str) -> str:
    """A transfer target as a SIP URI: a full sip:/sips:/tel: URI is kept; an extension or number (`8001`,
    `agent`) is addressed on the host of the peer the call came from (the PBX or trunk that can route it)."""
    target = target.strip()
    if not target:
        raise ValueError("empty transfer target")
    if re.match(r"^(sips?|tel):", target, re.IGNORECASE):
        return target
    if not re.fullmatch(r"[A-Za-z0-9_.!~*'()+\-]+", target):
        raise ValueError(f"transfer target {target!r} is neither a SIP URI nor an extension")
    host = uri_of(peer_uri).partition(":")[2]
    host = host.split("@", 1)[1] if "@" in host else host
    host = host.split(";", 1)[0]
    if not host:
        raise ValueError(f"no host to address extension {target!r} on (peer {peer_uri!r})")
    return f"sip:{target}@{host}"
