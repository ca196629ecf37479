"""The hotline's side of an engine's pipe, without PJSIP: messages take effect in the order the engine sent them."""

from __future__ import annotations

import asyncio

import pytest

from telephony.calls.base import CallChannel, CallInfo, Transferred, TransferUnavailable
from telephony.transports.sip.agent import SipCallTransport, SipLine, _EngineHandle
from telephony.transports.sip.config import SipConfig


class _Pipe:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, message: tuple) -> None:
        self.sent.append(message)


async def test_a_bye_right_after_the_refers_final_notify_still_ends_the_call_as_transferred() -> None:
    """After a REFER the engine sends ("done", request, None) and, at once, ("ended", key) for its leg's BYE. Both
    can be handled before the transfer's coroutine resumes; the call must still end as Transferred (it once ended as
    the caller hanging up, seen in CI)."""
    config = SipConfig()
    line = SipLine(config)
    engine = _EngineHandle(line, 0, config, connection=_Pipe())
    call = SipCallTransport(engine, 7, CallInfo(CallChannel.SIP, caller_number="13800000000"),
                            "sip:13800000000@127.0.0.1:5080")
    engine.calls[7] = call
    ready = asyncio.get_running_loop().create_future()

    transfer = asyncio.create_task(call.transfer("8001"))
    await asyncio.sleep(0)  # the REFER request is on the pipe
    (kind, request, key, uri), = engine.connection.sent
    assert (kind, key, uri) == ("transfer", 7, "sip:8001@127.0.0.1:5080")
    line._on_message(engine, ("done", request, None), ready)
    line._on_message(engine, ("ended", 7, {"code": 200}), ready)
    await transfer

    events = [event async for event in call.events()]
    assert events == [Transferred("sip:8001@127.0.0.1:5080")]
    assert line.transfers == {config.transfer_mode: 1}


async def test_a_refused_transfer_leaves_the_call_with_the_assistant() -> None:
    config = SipConfig()
    line = SipLine(config)
    engine = _EngineHandle(line, 0, config, connection=_Pipe())
    call = SipCallTransport(engine, 3, CallInfo(CallChannel.SIP), "sip:caller@127.0.0.1:5080")
    transfer = asyncio.create_task(call.transfer("sip:8001@127.0.0.1"))
    await asyncio.sleep(0)
    request = engine.connection.sent[0][1]
    line._on_message(engine, ("done", request, "transfer refused: 486 Busy Here"), asyncio.Future())
    with pytest.raises(TransferUnavailable, match="486 Busy Here"):
        await transfer
    assert call.transferred_to is None and call.queue.empty()
    assert line.transfers == {"failed": 1}
