"""A loopback double of Tencent Cloud's SMS API (SendSms 2021-01-11) on 127.0.0.1.

It checks each request's TC3-HMAC-SHA256 signature the way Tencent documents it (签名方法 v3: canonical request of
method, "/", query, the SignedHeaders as lowercase key:value lines, their names and the body's SHA-256; string to sign
"TC3-HMAC-SHA256\\n<timestamp>\\n<date>/<service>/tc3_request\\n<hash>"; key chain "TC3"+key → date → service →
"tc3_request"), written here from that text and not taken from the gateway, and answers as Tencent does:
`AuthFailure.SignatureFailure` for a bad signature, a SendStatusSet with Code "Ok" and a SerialNo for a send.
Particular numbers can be told to get a documented error code (per number, or for the whole request), a garbage
body, an HTTP 500, or no answer for a while. It stops by itself after `lifetime_s`."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

MAX_SKEW_S = 300  # "Timestamp 和服务器时间相差不得超过五分钟"
_AUTHORIZATION = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<service>[^/]+)/tc3_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$")


def documented_signature(secret_key: str, method: str, headers: dict[str, str], signed_headers: str, body: bytes,
                         timestamp: str, date: str, service: str, query: str = "") -> str:
    """Steps 1-3 of the v3 document, in its order. `headers` maps lowercase names to the values as received."""
    lines = ""
    for name in signed_headers.split(";"):
        lines += name + ":" + headers.get(name, "").strip().lower() + "\n"
    canonical = (method + "\n" + "/" + "\n" + query + "\n" + lines + "\n" + signed_headers + "\n"
                 + hashlib.sha256(body).hexdigest())
    to_sign = ("TC3-HMAC-SHA256\n" + timestamp + "\n" + date + "/" + service + "/tc3_request\n"
               + hashlib.sha256(canonical.encode("utf-8")).hexdigest())

    def step(key: bytes, text: str) -> bytes:
        return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()

    signing = step(step(step(("TC3" + secret_key).encode("utf-8"), date), service), "tc3_request")
    return hmac.new(signing, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass
class Behaviour:
    kind: str  # "status" (per-number code) | "error" (whole-request code) | "garbage" | "http500" | "stall"
    code: str = ""
    message: str = ""
    seconds: float = 0.0


class FakeTencentSmsServer:
    """`with FakeTencentSmsServer() as server:` point the gateway at `server.endpoint`; accepted sends are in
    `server.sends` (the JSON bodies), every checked signature in `server.verified`."""

    def __init__(self, secrets: dict[str, str] | None = None, *, sdk_app_id: str = "1400006666",
                 lifetime_s: float = 60.0) -> None:
        self.secrets = dict(secrets or {"AKIDtest": "test-secret-key"})
        self.sdk_app_id = sdk_app_id
        self.lifetime_s = lifetime_s
        self.sends: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.verified: list[bool] = []
        self.behaviours: dict[str, Behaviour] = {}
        self._serials = itertools.count(1045710669157053657849499619)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- what particular numbers (11 digits, without +86) get -------------------------------------------------

    def fail(self, number: str, code: str, message: str = "", *, whole_request: bool = False) -> None:
        self.behaviours[number] = Behaviour("error" if whole_request else "status", code=code, message=message or code)

    def garbage(self, number: str) -> None:
        self.behaviours[number] = Behaviour("garbage")

    def http_500(self, number: str) -> None:
        self.behaviours[number] = Behaviour("http500")

    def stall(self, number: str, seconds: float) -> None:
        self.behaviours[number] = Behaviour("stall", seconds=seconds)

    # -- lifetime ---------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._timer.cancel()
        if self._thread.is_alive():
            self._server.shutdown()  # waits for serve_forever, so only when it runs
            self._thread.join(timeout=5)
        self._server.server_close()

    # -- the API ----------------------------------------------------------------------------------------------

    def handle(self, method: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        request_id = str(uuid.uuid4())

        def error(code: str, message: str) -> tuple[int, bytes, str]:
            payload = {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id}}
            return 200, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json"

        match = _AUTHORIZATION.match(headers.get("authorization", ""))
        if match is None:
            return error("AuthFailure.InvalidAuthorization", "Authorization header is not of the TC3-HMAC-SHA256 "
                                                             "form.")
        secret = self.secrets.get(match["id"])
        if secret is None:
            return error("AuthFailure.SecretIdNotFound", "The SecretId is not found, please ensure that your SecretId "
                                                         "is correct.")
        timestamp = headers.get("x-tc-timestamp", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > MAX_SKEW_S:
            return error("AuthFailure.SignatureExpire", "Signature expired. Timestamp and server time cannot differ "
                                                        "by more than 5 minutes.")
        signed = match["signed"].split(";")
        utc_date = dt.datetime.fromtimestamp(int(timestamp), dt.UTC).strftime("%Y-%m-%d")
        if "content-type" not in signed or "host" not in signed or match["date"] != utc_date:
            good = False
        else:
            expected = documented_signature(secret, method, headers, match["signed"], body, timestamp,
                                            match["date"], match["service"])
            good = match["service"] == "sms" and hmac.compare_digest(expected, match["signature"])
        with self._lock:
            self.verified.append(good)
        if not good:
            return error("AuthFailure.SignatureFailure", "The provided credentials could not be validated. Please "
                                                         "check your signature is correct.")
        if headers.get("x-tc-action") != "SendSms" or headers.get("x-tc-version") != "2021-01-11":
            return error("InvalidAction", "The action or version does not exist.")
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return error("FailedOperation.JsonParseFail", "Failed to parse the JSON data.")
        numbers = request.get("PhoneNumberSet")
        if not isinstance(numbers, list) or not numbers:
            return error("MissingParameter.EmptyPhoneNumberSet", "The list of mobile numbers passed in is empty.")
        if str(request.get("SmsSdkAppId")) != self.sdk_app_id:
            return error("UnauthorizedOperation.SmsSdkAppIdVerifyFail", "SmsSdkAppId verification failed.")
        if not request.get("TemplateId"):
            return error("MissingParameter", "The TemplateId parameter is missing.")
        params = request.get("TemplateParamSet", [])
        if not isinstance(params, list) or not all(isinstance(value, str) for value in params):
            return error("InvalidParameterValue.TemplateParameterFormatError", "The template parameters are not "
                                                                               "strings.")
        number = str(numbers[0])
        local = number.removeprefix("+86")
        behaviour = self.behaviours.get(local)
        if behaviour is not None:
            if behaviour.kind == "garbage":
                return 200, b"\x00\x01 not json", "application/octet-stream"
            if behaviour.kind == "http500":
                return 500, b"Internal Server Error", "text/plain"
            if behaviour.kind == "error":
                return error(behaviour.code, behaviour.message)
            if behaviour.kind == "stall":
                self._stopped.wait(behaviour.seconds)
        status = {"PhoneNumber": number, "Fee": 1, "SessionContext": request.get("SessionContext", ""),
                  "IsoCode": "CN"}
        if behaviour is not None and behaviour.kind == "status":
            status.update({"SerialNo": "", "Fee": 0, "Code": behaviour.code, "Message": behaviour.message})
        else:
            status.update({"SerialNo": f"5000:{next(self._serials)}", "Code": "Ok", "Message": "send success"})
            with self._lock:
                self.sends.append(request)
                self.headers.append(dict(headers))
        payload = {"Response": {"SendStatusSet": [status], "RequestId": request_id}}
        return 200, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, payload, content_type = fake.handle("POST", headers, body)
                if fake._stopped.is_set():
                    return
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                return None

        return Handler
