"""A loopback double of Aliyun's SMS API (dysmsapi, SendSms 2017-05-25) on 127.0.0.1.

It checks each request's RPC signature the way Aliyun documents it (help.aliyun.com/document_detail/101343: sort
the parameters, encode with URLEncoder then + -> %20, * -> %2A, %7E -> ~, sign "METHOD&%2F&" + the encoded query
with HMAC-SHA1 and the key secret + "&"), written here from that text and not taken from the gateway, and answers as
Aliyun does: `SignatureDoesNotMatch` (HTTP 400) for a bad signature, {"Code": "OK", "BizId": …} for a send.
Particular numbers can be told to get a documented error code, a garbage body, an HTTP 500, or no answer for a while.
It stops by itself after `lifetime_s`."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import itertools
import json
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qsl, quote_plus, urlsplit

HOST_ID = "dysmsapi.aliyuncs.com"
TIMESTAMP_TOLERANCE = dt.timedelta(minutes=15)


def documented_encode(value: str) -> str:
    """The encoding as the signature document describes it for Java's URLEncoder, step by step."""
    return quote_plus(value, safe="", encoding="utf-8").replace("+", "%20").replace("*", "%2A").replace("%7E", "~")


def documented_signature(method: str, params: dict[str, str], secret: str) -> str:
    pairs = sorted((key, value) for key, value in params.items() if key != "Signature")
    sorted_query = "&".join(documented_encode(key) + "=" + documented_encode(value) for key, value in pairs)
    to_sign = method + "&" + documented_encode("/") + "&" + documented_encode(sorted_query)
    mac = hmac.new((secret + "&").encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


@dataclass
class Behaviour:
    kind: str  # "code" | "garbage" | "http500" | "stall"
    code: str = ""
    message: str = ""
    seconds: float = 0.0


class FakeAliyunSmsServer:
    """`with FakeAliyunSmsServer() as server:` point the gateway at `server.endpoint`; accepted sends are in
    `server.sends` (the request parameters), every checked signature in `server.verified`."""

    def __init__(self, access_keys: dict[str, str] | None = None, *, lifetime_s: float = 60.0) -> None:
        self.access_keys = dict(access_keys or {"testId": "testSecret"})
        self.lifetime_s = lifetime_s
        self.sends: list[dict[str, str]] = []
        self.verified: list[bool] = []
        self.behaviours: dict[str, Behaviour] = {}
        self._nonces: set[str] = set()
        self._ids = itertools.count(900619746936498)
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

    # -- what particular numbers get --------------------------------------------------------------------------

    def fail(self, number: str, code: str, message: str = "") -> None:
        self.behaviours[number] = Behaviour("code", code=code, message=message or code)

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
        self._stopped.set()  # wakes stalled handlers
        self._timer.cancel()
        if self._thread.is_alive():
            self._server.shutdown()  # waits for serve_forever, so only when it runs
            self._thread.join(timeout=5)
        self._server.server_close()

    # -- the API ----------------------------------------------------------------------------------------------

    def handle(self, method: str, params: dict[str, str]) -> tuple[int, bytes, str]:
        """(HTTP status, body, content type) for one request's parameters."""
        request_id = str(uuid.uuid4()).upper()

        def error(status: int, code: str, message: str) -> tuple[int, bytes, str]:
            body = {"RequestId": request_id, "HostId": HOST_ID, "Code": code, "Message": message,
                    "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}&product=Dysmsapi"}
            return status, json.dumps(body).encode(), "application/json;charset=utf-8"

        for name in ("AccessKeyId", "Signature", "SignatureMethod", "SignatureNonce", "SignatureVersion", "Timestamp",
                     "Action", "Version"):
            if not params.get(name):
                return error(400, "MissingParameter" if name != "Signature" else "IncompleteSignature",
                             f"The input parameter \"{name}\" that is mandatory for processing this request is not "
                             "supplied.")
        secret = self.access_keys.get(params["AccessKeyId"])
        if secret is None:
            return error(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        if params["SignatureMethod"] != "HMAC-SHA1" or params["SignatureVersion"] != "1.0":
            return error(400, "InvalidParameter", "Specified signature method or version is not supported.")
        expected = documented_signature(method, params, secret)
        good = hmac.compare_digest(expected, params["Signature"])
        with self._lock:
            self.verified.append(good)
        if not good:
            return error(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
        try:
            sent_at = dt.datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            return error(400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.")
        if abs(dt.datetime.now(dt.UTC) - sent_at) > TIMESTAMP_TOLERANCE:
            return error(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
        with self._lock:
            if params["SignatureNonce"] in self._nonces:
                return error(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
            self._nonces.add(params["SignatureNonce"])
        if params["Action"] != "SendSms" or params["Version"] != "2017-05-25":
            return error(404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method.")
        for name in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not params.get(name):
                return error(400, f"Missing{name}", f"{name} is mandatory for this action.")
        if "TemplateParam" in params:
            try:
                variables = json.loads(params["TemplateParam"])
            except ValueError:
                variables = None
            if not isinstance(variables, dict) or not all(isinstance(value, str) for value in variables.values()):
                return self._business(request_id, "isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")

        behaviour = self.behaviours.get(params["PhoneNumbers"])
        if behaviour is not None:
            if behaviour.kind == "garbage":
                return 200, b"<html>upstream proxy error", "text/html"
            if behaviour.kind == "http500":
                return error(500, "InternalError", "The request processing has failed due to some unknown error.")
            if behaviour.kind == "stall":
                self._stopped.wait(behaviour.seconds)
            if behaviour.kind == "code":
                return self._business(request_id, behaviour.code, behaviour.message)
        biz_id = f"{next(self._ids)}^0"
        with self._lock:
            self.sends.append({**params, "BizId": biz_id})
        return self._business(request_id, "OK", "OK", BizId=biz_id)

    @staticmethod
    def _business(request_id: str, code: str, message: str, **extra: str) -> tuple[int, bytes, str]:
        body = {"Message": message, "RequestId": request_id, "Code": code, **extra}
        return 200, json.dumps(body, ensure_ascii=False).encode("utf-8"), "application/json;charset=utf-8"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
                if self.command == "POST":
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length).decode("utf-8")
                    params.update(parse_qsl(body, keep_blank_values=True))
                status, payload, content_type = fake.handle(self.command, params)
                if fake._stopped.is_set():
                    return
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

            def log_message(self, *args) -> None:
                return None

        return Handler
