"""Caller ID and transfer targets as the SIP line reads them from real-world header forms."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from telephony.settings import Settings
from telephony.transports.sip.headers import caller_id, header_values, number_of, transfer_uri

INVITE = (
    "INVITE sip:hotline@10.0.0.5:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n"
    "From: \"Zhang San\" <sip:07732345678@carrier.example>;tag=1928301774\r\n"
    "To: <sip:12333@10.0.0.5>\r\n"
    "{extra}"
    "Call-ID: a84b4c76e66710@carrier.example\r\n"
    "Content-Length: 0\r\n\r\n"
)


def test_the_asserted_identity_of_a_trunk_wins_over_from() -> None:
    invite = INVITE.format(extra="P-Asserted-Identity: <sip:+8613812345678@carrier.example;user=phone>\r\n")
    assert caller_id(invite) == "+8613812345678"


def test_a_sip_and_a_tel_identity_in_one_header_give_the_number() -> None:
    invite = INVITE.format(extra='P-Asserted-Identity: "Anonymous" <sip:anonymous@anonymous.invalid>, '
                                 "<tel:+86-138-1234-5678>\r\n")
    assert caller_id(invite) == "+8613812345678"


def test_from_gives_the_caller_when_there_is_no_asserted_identity() -> None:
    assert caller_id(INVITE.format(extra="")) == "07732345678"


def test_compact_and_folded_headers_are_read() -> None:
    message = "INVITE sip:a@b SIP/2.0\r\nf: <sip:13900001111@pbx>\r\n ;tag=9\r\nt: <sip:a@b>\r\n\r\n"
    assert header_values(message, "from") == ["<sip:13900001111@pbx> ;tag=9"]
    assert caller_id(message) == "13900001111"


@pytest.mark.parametrize("uri", ["sip:anonymous@anonymous.invalid", "sip:pbx.example", "mailto:x@y", "sip:@host"])
def test_a_withheld_or_numberless_caller_is_none(uri: str) -> None:
    assert number_of(uri) is None


def test_an_extension_name_is_kept_as_given() -> None:
    assert number_of("sip:alice@127.0.0.1:5070") == "alice"


def test_a_body_line_that_looks_like_a_header_is_not_read() -> None:
    message = INVITE.format(extra="").replace("Content-Length: 0\r\n\r\n",
                                              "Content-Length: 40\r\n\r\nFrom: <sip:13800000000@evil>\r\n")
    assert caller_id(message) == "07732345678"


def test_an_extension_is_addressed_on_the_pbx_the_call_came_from() -> None:
    assert transfer_uri("8001", "<sip:13800000000@192.168.1.10:5060;transport=udp>") == "sip:8001@192.168.1.10:5060"
    assert transfer_uri("sip:queue@pbx.example", "<sip:x@y>") == "sip:queue@pbx.example"
    assert transfer_uri("tel:+867732345678", "sip:x@y") == "tel:+867732345678"


@pytest.mark.parametrize("target", ["", "8001 8002", "<script>"])
def test_a_malformed_transfer_target_is_refused(target: str) -> None:
    with pytest.raises(ValueError):
        transfer_uri(target, "sip:x@pbx")


def test_sip_settings_are_validated_with_clear_errors() -> None:
    with pytest.raises(ValidationError, match="sip_codecs"):
        Settings(sip_codecs=["OPUS"])
    with pytest.raises(ValidationError, match="HOTLINE_SIP_REGISTRAR"):
        Settings(sip_enabled=True, sip_mode="register")
    with pytest.raises(ValidationError, match="HOTLINE_SIP_AUTH_USER"):
        Settings(sip_enabled=True, sip_mode="register", sip_registrar="sip:pbx.example:5060")
    with pytest.raises(ValidationError, match="65536"):
        Settings(sip_rtp_port=65000, sip_rtp_port_range=1000)
    assert Settings(sip_codecs=["pcma", "g722"]).sip_codecs == ["PCMA", "G722"]
