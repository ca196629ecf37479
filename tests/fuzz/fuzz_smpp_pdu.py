"""Fuzz the SMPP gateway's handling of PDUs from the SMSC (`telephony.sms.gateways.smpp.SmppGateway`).

Input: the bytes of one PDU as read from the socket. smpplib decodes it (its own errors end the session and the
gateway binds again: they are not ours, so they are skipped here); what it decodes goes through the gateway's
`_receipt` (deliver_sm: the deliver_sm_resp status, ROK or "deliver again") or `_dispatch` (responses the gateway
does not answer). Property: neither raises; any exception from our code is a crash.

    python tests/fuzz/fuzz_smpp_pdu.py -max_total_time=30 CORPUS_COPY tests/fuzz/corpus/smpp_pdu
"""

import logging
import sys

import atheris

with atheris.instrument_imports(include=["telephony", "smpplib"]):
    import smpplib.client
    import smpplib.smpp

    from telephony.sms.gateways.smpp import ESME_ROK, ESME_RX_T_APPN, SmppGateway

logging.disable(logging.CRITICAL)  # "ignoring …", "unreadable delivery receipt …" on every input
GATEWAY = SmppGateway("127.0.0.1", 2775, "hotline", "secret")
# As the gateway makes it (smpplib's PDU decoding needs a client); never connected.
CLIENT = smpplib.client.Client("127.0.0.1", 2775, allow_unknown_opt_params=True)
ANSWERED = {"deliver_sm", "enquire_link", "unbind"}  # _dispatch answers these on the client's socket


def test_one_input(data: bytes) -> None:
    try:
        pdu = smpplib.smpp.parse_pdu(data, client=CLIENT, allow_unknown_opt_params=True)
    except Exception:  # noqa: BLE001 - smpplib's decoding: the session loop catches it and binds again
        return
    if pdu is None:
        return
    if pdu.command == "deliver_sm":
        assert GATEWAY._receipt(pdu) in (ESME_ROK, ESME_RX_T_APPN)
    elif pdu.command not in ANSWERED:
        assert GATEWAY._dispatch(None, pdu) is None


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
