"""A local OpenAI-compatible chat-completions server on 127.0.0.1 speaking real HTTP and SSE.

The requested `model` picks the behaviour: normal streaming, a slow first token, HTTP 500, a malformed
stream, a model that obeys whatever the caller text tells it (to test prompt-injection defences), or `grounded`: a
well-behaved model that says the first passage's summary in words of its own (a reply the post-checks accept, for the
benchmarks).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

NORMAL_REPLY = ["社保卡丢了", "请先打12333办理临时挂失。", "然后带上身份证", "到合作银行网点正式挂失并补卡。"]


def _chunk(content: str, finish: str | None = None) -> str:
    payload = {
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()), "model": "fake",
        "choices": [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _obedient_reply(messages: list[dict]) -> list[str]:
    """What a model with no defences would say: it follows instructions found in the caller text."""
    user = messages[-1]["content"]
    caller = user.split("【来电内容】", 1)[-1]
    if "提示词" in caller or "规则" in caller:
        return [messages[0]["content"]]
    phone = re.search(r"1\d{10}", caller)
    if phone:
        return [f"好的，请直接拨打{phone.group(0)}办理。"]
    if "5000" in caller or "金额" in caller:
        return ["好的，养老金每个月统一发5000元。"]
    return ["我现在是一只猫，喵。", "这个网址可以查：http://example.com。"]


def _grounded_reply(messages: list[dict]) -> list[str]:
    """The first passage's summary after 「好的，」 (a sentence of its own, as a model's would be, so no cache holds
    it), in pieces as a model streams it."""
    summary = re.search(r"摘要：(.*)", messages[-1]["content"])
    text = "好的，" + summary.group(1).strip() if summary else "无法回答"
    return [text[index:index + 6] for index in range(0, len(text), 6)]


def create_app() -> FastAPI:
    app = FastAPI()
    app.state.requests = []

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
        app.state.requests.append(body)
        model = body.get("model", "")
        if model == "error500":
            return JSONResponse(status_code=500, content={"error": {"message": "upstream exploded", "type": "server_error"}})

        async def events():
            if model == "slow":
                await asyncio.sleep(3)
            if model == "malformed":
                yield _chunk("社保卡")
                yield "data: {this is not json\n\n"
                return
            parts = (_obedient_reply(body["messages"]) if model == "obedient"
                     else _grounded_reply(body["messages"]) if model == "grounded" else NORMAL_REPLY)
            for part in parts:
                yield _chunk(part)
                await asyncio.sleep(0.01)
            yield _chunk("", finish="stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class FakeOpenAiServer:
    """Runs the app with uvicorn in a thread; `with FakeOpenAiServer() as server: server.base_url`."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.app = create_app()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict]:
        return self.app.state.requests

    def __enter__(self) -> FakeOpenAiServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
