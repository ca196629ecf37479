"""SmppGateway against a fake SMSC (smpp34) on 127.0.0.1: concatenation, receipts, refusals, binds and rebinds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import smpp34

from telephony.bench.doubles.smsc import FakeSmsc, Rule, free_port
from telephony.sms.base import DeliveryReport, DeliveryState, OutgoingSms, SmsError
from telephony.sms.compose import segment_count
from telephony.sms.gateways.smpp import SmppGateway, parse_receipt

SIGNATURE = "【测试社保】"
GUIDE = (SIGNATURE + "失业保险金申领：参保满一年、非因本人意愿中断就业、已办理失业登记并有求职要求的人员，"
         "可在离职之日起六十日内携带身份证、社保卡和离职证明到户籍所在地或常住地的社保经办机构申请，"
         "也可以通过手机应用线上办理。") * 3
GUIDE = GUIDE[:300]
SHORT = (SIGNATURE + "您的社保卡已制作完成，请携带身份证到申领网点领取。咨询电话0773-0000000。")
SHORT = (SHORT + "谢" * 70)[:70]


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def message(to: str, body: str = SHORT, reference: str = "call-1:item-1") -> OutgoingSms:
    return OutgoingSms(reference=reference, to_number=to, body=body)


@pytest.fixture
def smsc() -> Iterator[FakeSmsc]:
    with FakeSmsc(lifetime_s=30) as fake:
        yield fake


class Harness:
    def __init__(self) -> None:
        self.reports: asyncio.Queue[DeliveryReport] = asyncio.Queue()
        self.gateways: list[SmppGateway] = []

    async def gateway(self, port: int, *, password: str = "secret", bound: bool = True, **options) -> SmppGateway:
        options = {"source_addr": "10655", "submit_timeout_s": 3, "reconnect_min_s": 0.05,
                   "reconnect_max_s": 0.3} | options
        gateway = SmppGateway("127.0.0.1", port, "hotline", password, **options)
        self.gateways.append(gateway)
        await gateway.start(self.reports.put)
        if bound:
            await until(lambda: gateway.status() == "bound", what="bind")
        return gateway

    async def report(self, timeout_s: float = 5.0) -> DeliveryReport:
        return await asyncio.wait_for(self.reports.get(), timeout_s)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    for gateway in harness.gateways:
        await asyncio.wait_for(gateway.close(), 10)


async def test_a_300_character_guide_goes_as_five_ucs2_parts_that_reassemble(smsc: FakeSmsc, harness: Harness):
    assert len(GUIDE) == 300
    gateway = await harness.gateway(smsc.port)
    receipt = await gateway.send(message("13800000001", GUIDE))

    assert receipt.segments == 5 == segment_count(GUIDE)
    assert receipt.state is DeliveryState.SUBMITTED and receipt.gateway == "smpp"
    parts = smsc.submits_to("13800000001")
    assert len(parts) == 5
    assert {p.data_coding for p in parts} == {8} and all(p.esm_class & 0x40 for p in parts)
    assert all(p.udh[:3] == b"\x05\x00\x03" and p.udh[4] == 5 for p in parts)
    assert len({p.udh[3] for p in parts}) == 1 and sorted(p.udh[5] for p in parts) == [1, 2, 3, 4, 5]
    assert sorted(len(p.payload) // 2 for p in parts) == [32, 67, 67, 67, 67]
    assert all(p.registered_delivery & 1 and p.source_addr == "10655" for p in parts)
    assert smsc.texts_to("13800000001") == [GUIDE]
    assert set(receipt.part_ids) == {p.message_id for p in parts} and len(receipt.part_ids) == 5
    assert receipt.message_id == receipt.part_ids[0]
    assert {(await harness.report()).message_id for _ in range(5)} == set(receipt.part_ids)


async def test_seventy_characters_is_one_part_without_udh(smsc: FakeSmsc, harness: Harness):
    assert len(SHORT) == 70
    gateway = await harness.gateway(smsc.port)
    receipt = await gateway.send(message("13800000002", SHORT))

    [part] = smsc.submits_to("13800000002")
    assert receipt.segments == 1 and receipt.part_ids == (part.message_id,) == (receipt.message_id,)
    assert part.esm_class & 0x40 == 0 and part.udh == b"" and part.data_coding == 8
    assert part.short_message.decode("utf-16-be") == SHORT


async def test_the_receipt_becomes_a_delivered_report_for_the_message_id(smsc: FakeSmsc, harness: Harness):
    gateway = await harness.gateway(smsc.port)
    receipt = await gateway.send(message("13800000003"))
    report = await harness.report()
    assert report.state is DeliveryState.DELIVERED
    assert report.message_id == receipt.message_id and report.gateway == "smpp"
    assert report.error_code is None and "stat:DELIVRD" in report.detail
    await asyncio.to_thread(smsc.wait_for, lambda s: len(s.receipts) == 1)
    assert smsc.receipts[0].acknowledged  # deliver_sm_resp ESME_ROK


async def test_an_undeliverable_receipt_becomes_a_failed_report(smsc: FakeSmsc, harness: Harness):
    smsc.rules["13800000004"] = Rule(receipt="UNDELIV", error="005")
    gateway = await harness.gateway(smsc.port)
    receipt = await gateway.send(message("13800000004"))
    report = await harness.report()
    assert (report.state, report.message_id, report.error_code) == (DeliveryState.FAILED, receipt.message_id, "005")


@pytest.mark.parametrize(("status", "retryable", "code"), [
    (smpp34.ESME_RTHROTTLED, True, "0x00000058"),
    (smpp34.ESME_RMSGQFUL, True, "0x00000014"),
    (smpp34.ESME_RINVDSTADR, False, "0x0000000B"),
    (smpp34.ESME_RINVSRCADR, False, "0x0000000A"),
])
async def test_a_refused_submit_raises_with_the_status(smsc: FakeSmsc, harness: Harness, status: int,
                                                      retryable: bool, code: str):
    smsc.rules["13800000005"] = Rule(refuse=status)
    gateway = await harness.gateway(smsc.port)
    with pytest.raises(SmsError) as refused:
        await gateway.send(message("13800000005", GUIDE))
    assert refused.value.retryable is retryable and refused.value.code == code
    assert gateway.status() == "bound"
    await gateway.send(message("13800000006"))  # the link is still good


async def test_no_submit_response_in_time_is_retryable_and_a_late_one_is_ignored(smsc: FakeSmsc, harness: Harness):
    smsc.rules["13800000007"] = Rule(submit_delay_s=0.6)
    gateway = await harness.gateway(smsc.port, submit_timeout_s=0.2)
    with pytest.raises(SmsError, match="no submit_sm_resp") as late:
        await gateway.send(message("13800000007"))
    assert late.value.retryable
    await asyncio.sleep(0.5)  # the late submit_sm_resp arrives meanwhile
    receipt = await gateway.send(message("13800000008"))
    assert receipt.message_id == smsc.submits_to("13800000008")[0].message_id


async def test_a_connection_lost_while_a_submit_awaits_its_response_is_an_unknown_outcome(smsc: FakeSmsc,
                                                                                         harness: Harness):
    """The SMSC has the submit_sm when the link dies: resending could give the caller the guide twice, so the error
    says the outcome is unknown (the outbox fails it for staff instead of resending, `hotline bench faults`)."""
    smsc.rules["13800000018"] = Rule(submit_delay_s=1.0)
    gateway = await harness.gateway(smsc.port)
    sending = asyncio.create_task(gateway.send(message("13800000018")))
    await until(lambda: len(smsc.submits_to("13800000018")) == 1, what="the SMSC has the submit_sm")
    smsc.drop_connections()
    with pytest.raises(SmsError) as lost:
        await sending
    assert lost.value.outcome_unknown
    await until(lambda: gateway.status() == "bound", what="bound again")
    assert len(smsc.submits_to("13800000018")) == 1


async def test_smsc_down_at_start_then_up(harness: Harness):
    port = free_port()
    gateway = await harness.gateway(port, bound=False)  # start() returns although nothing listens
    await until(lambda: gateway.status().startswith("reconnecting: cannot bind"), what="a failed bind")
    with pytest.raises(SmsError) as unbound:
        await gateway.send(message("13800000009"))
    assert unbound.value.retryable

    with FakeSmsc(port=port, lifetime_s=30) as smsc:
        await until(lambda: gateway.status() == "bound", what="bind once the SMSC is up")
        receipt = await gateway.send(message("13800000009"))
        assert smsc.texts_to("13800000009") == [SHORT] and receipt.segments == 1


async def test_a_dropped_connection_is_bound_again_and_the_next_send_succeeds(smsc: FakeSmsc, harness: Harness):
    gateway = await harness.gateway(smsc.port)
    await gateway.send(message("13800000010"))
    smsc.drop_connections()
    await until(lambda: [ok for _, ok in smsc.binds].count(True) == 2 and gateway.status() == "bound",
                what="a second bind")
    await gateway.send(message("13800000011"))
    assert smsc.texts_to("13800000011") == [SHORT]


async def test_an_unbind_from_the_smsc_is_answered_and_the_gateway_binds_again(smsc: FakeSmsc, harness: Harness):
    gateway = await harness.gateway(smsc.port)
    await asyncio.to_thread(smsc.unbind_all)
    await until(lambda: [ok for _, ok in smsc.binds].count(True) == 2 and gateway.status() == "bound",
                what="a second bind")
    await gateway.send(message("13800000016"))


async def test_a_failing_report_sink_leaves_the_receipt_unacknowledged(smsc: FakeSmsc, harness: Harness):
    async def broken_sink(report: DeliveryReport) -> None:
        raise RuntimeError("database down")

    gateway = SmppGateway("127.0.0.1", smsc.port, "hotline", "secret", reconnect_min_s=0.05)
    harness.gateways.append(gateway)
    await gateway.start(broken_sink)
    await until(lambda: gateway.status() == "bound", what="bind")
    await gateway.send(message("13800000017"))
    await until(lambda: len(smsc.receipts) == 1, what="the receipt's answer")
    assert smsc.receipts[0].acknowledged is False  # ESME_RX_T_APPN: the SMSC keeps it and delivers it again
    assert gateway.status() == "bound"


async def test_an_smsc_that_goes_away_and_comes_back(harness: Harness):
    port = free_port()
    smsc = FakeSmsc(port=port, lifetime_s=30).start()
    try:
        gateway = await harness.gateway(port)
        smsc.stop()
        await until(lambda: gateway.status().startswith("reconnecting"), what="the link to drop")
        with pytest.raises(SmsError) as down:
            await gateway.send(message("13800000012"))
        assert down.value.retryable
        smsc.start()
        await until(lambda: gateway.status() == "bound", what="a new bind")
        await gateway.send(message("13800000012"))
        assert smsc.texts_to("13800000012") == [SHORT]
    finally:
        smsc.stop()


async def test_a_wrong_password_shows_in_status_and_sends_wait_for_the_fix(smsc: FakeSmsc, harness: Harness):
    gateway = await harness.gateway(smsc.port, password="wrong", bound=False)
    await until(lambda: gateway.status().startswith("reconnecting: bind refused"), what="the refusal")
    assert "Invalid Password" in gateway.status() and "0x0000000E" in gateway.status()
    with pytest.raises(SmsError) as refused:
        await gateway.send(message("13800000013"))
    assert refused.value.retryable is True and refused.value.code == "0x0000000E"  # nothing left: retry is safe
    assert smsc.binds[0] == ("hotline", False) and smsc.submits == []


async def test_an_idle_link_is_kept_alive_by_enquire_link(smsc: FakeSmsc, harness: Harness):
    gateway = await harness.gateway(smsc.port, enquire_link_s=0.1, submit_timeout_s=0.5)
    await asyncio.sleep(0.6)  # several enquire_link / enquire_link_resp rounds
    assert gateway.status() == "bound" and len(smsc.binds) == 1
    await gateway.send(message("13800000014"))


async def test_close_unbinds_stops_the_thread_and_is_idempotent(smsc: FakeSmsc, harness: Harness):
    gateway = await harness.gateway(smsc.port)
    await gateway.close()
    await gateway.close()
    assert gateway.status() == "closed"
    assert not [t for t in threading.enumerate() if t.name == "smpp-smpp"]
    with pytest.raises(SmsError) as closed:
        await gateway.send(message("13800000015"))
    assert closed.value.retryable


def test_receipt_parsing():
    text = b"id:7A sub:001 dlvrd:000 submit date:2401011200 done date:2401011201 stat:EXPIRED err:000 text:stat:DELIVRD"
    report = parse_receipt("smpp", text)
    assert (report.message_id, report.state, report.error_code) == ("7A", DeliveryState.EXPIRED, None)
    # The TLVs win over the text (some SMSCs write the id in decimal there).
    report = parse_receipt("smpp", b"id:122 stat:DELIVRD err:000", receipted_message_id=b"7A\0", message_state=5)
    assert (report.message_id, report.state) == ("7A", DeliveryState.DELIVERED)
    assert parse_receipt("smpp", b"", receipted_message_id="7A", message_state=8).state is DeliveryState.FAILED
    assert parse_receipt("smpp", b"hello, this is a reply") is None
    assert parse_receipt("smpp", b"id:7A stat:SOMETHING") is None
