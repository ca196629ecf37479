"""Who may open a media stream: the shared token, a short-lived softphone token, or a valid Twilio signature."""

from __future__ import annotations

import hashlib
import hmac
import time

from telephony.transports.twilio.protocol import signature_valid

SOFTPHONE_TOKEN_TTL_S = 600
SOFTPHONE_PREFIX = "sp"


class MediaStreamAuth:
    """Checks the credentials a media-stream connection brings (pure: no sockets)."""

    def __init__(self, media_token: str, twilio_auth_token: str | None = None) -> None:
        self.media_token = media_token
        self.twilio_auth_token = twilio_auth_token

    def _softphone_mac(self, expiry: int) -> str:
        return hmac.new(self.media_token.encode(), f"softphone.{expiry}".encode(), hashlib.sha256).hexdigest()[:32]

    def softphone_token(self, now: float | None = None) -> str:
        """A token for the browser softphone, valid for `SOFTPHONE_TOKEN_TTL_S`."""
        expiry = int((now or time.time()) + SOFTPHONE_TOKEN_TTL_S)
        return f"{SOFTPHONE_PREFIX}.{expiry}.{self._softphone_mac(expiry)}"

    def authorized(self, token: str, twilio_signature: str | None, url: str, now: float | None = None) -> bool:
        if token and hmac.compare_digest(token.encode(), self.media_token.encode()):
            return True
        if token.startswith(f"{SOFTPHONE_PREFIX}."):
            parts = token.split(".")
            if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) >= (now or time.time()):
                return hmac.compare_digest(parts[2].encode(), self._softphone_mac(int(parts[1])).encode())
        if twilio_signature and self.twilio_auth_token is not None:
            # Behind a proxy the server sees ws:// where Twilio signed wss:// (or https://).
            candidates = {url, url.replace("ws://", "wss://", 1), url.replace("ws://", "https://", 1)}
            return any(signature_valid(self.twilio_auth_token, candidate, twilio_signature) for candidate in candidates)
        return False
