"""Fuzz the SMPP delivery-receipt text parser (`telephony.sms.gateways.smpp.parse_receipt`).

Input: a deliver_sm short_message (the `id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…` text);
its first bytes also serve as the receipted_message_id and message_state TLVs. Property: a `DeliveryReport` naming a
message and a known state, or None ("unreadable receipt", logged and acknowledged); it never raises.

    python tests/fuzz/fuzz_smpp_receipt.py -max_total_time=30 CORPUS_COPY tests/fuzz/corpus/smpp_receipt
"""

import sys

import atheris

with atheris.instrument_imports(include=["telephony"]):
    from telephony.sms.base import DeliveryReport, DeliveryState
    from telephony.sms.gateways.smpp import parse_receipt


def check(report: object) -> None:
    if report is None:
        return
    assert isinstance(report, DeliveryReport), report
    assert isinstance(report.message_id, str) and report.message_id
    assert isinstance(report.state, DeliveryState)
    assert report.error_code is None or isinstance(report.error_code, str)
    assert isinstance(report.detail, str) and len(report.detail) <= 200


def test_one_input(data: bytes) -> None:
    check(parse_receipt("smpp", data))
    check(parse_receipt("smpp", data.decode("latin-1")))
    tlv_id = data[:12] if data[:1] != b"i" else None
    check(parse_receipt("smpp", data, receipted_message_id=tlv_id, message_state=data[-1] if data else None))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
