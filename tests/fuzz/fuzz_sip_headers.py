"""Fuzz what the SIP line reads from a request (`telephony.transports.sip.headers`).

Input: a SIP request as pjsua2 hands it over (`wholeMsg`, str). Property: `caller_id` and the called number (as
`engine.py` derives them) give a number or None and never raise; `transfer_uri` for a configured target on the peer
the call came from (its Contact) gives a SIP URI or the documented ValueError; any other exception is a crash.

    python tests/fuzz/fuzz_sip_headers.py -max_total_time=30 CORPUS_COPY tests/fuzz/corpus/sip_headers
"""

import sys

import atheris

with atheris.instrument_imports(include=["telephony"]):
    from telephony.transports.sip.headers import caller_id, header_values, number_of, transfer_uri, uri_of

TARGETS = ("8001", "agent", "sip:queue@pbx.example.cn", "tel:+867730000000")


def test_one_input(data: bytes) -> None:
    message = data.decode("utf-8", errors="surrogateescape")  # SWIG's str of a std::string
    number = caller_id(message)
    assert number is None or (isinstance(number, str) and number), number
    called = header_values(message, "to")
    assert all(isinstance(value, str) for value in called)
    if called:
        number = number_of(uri_of(called[0]))
        assert number is None or (isinstance(number, str) and number), number
    contacts = header_values(message, "contact")
    peer = contacts[0] if contacts else message.split("\n", 1)[0]
    for target in TARGETS:
        try:
            uri = transfer_uri(target, peer)
        except ValueError:
            continue
        assert isinstance(uri, str) and uri.lower().startswith(("sip:", "sips:", "tel:")), uri


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
