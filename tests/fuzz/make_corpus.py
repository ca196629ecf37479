"""Writes the seed corpora in tests/fuzz/corpus/<harness>/: real, valid messages of each wire format, built with the
product's own encoders where it has them and copied from the providers' documented examples where it does not.

    python tests/fuzz/make_corpus.py        # rewrites the checked-in seeds (they are small: < 2 KiB each)
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import smpplib.client
import smpplib.smpp

from telephony.transports.audiosocket import protocol as audiosocket
from telephony.transports.twilio import protocol as twilio
from voice.funasr.protocol import END_OF_SPEECH_JSON, RecognitionResult, ServerError, StreamConfig

CORPUS = Path(__file__).resolve().parent / "corpus"
MULAW_20MS = bytes(range(0x50, 0x50 + 160))  # 160 μ-law bytes: one 20 ms frame at 8 kHz
SID = "MZ" + "1" * 32
CLIENT = smpplib.client.Client("127.0.0.1", 2775, allow_unknown_opt_params=True)  # never connected


def media_stream() -> dict[str, str | bytes]:
    return {
        "connected": twilio.connected_message(),
        "start": twilio.start_message(SID, "CA" + "2" * 32, {"caller": "13800001111", "line": "main"}),
        "media": twilio.inbound_media_message(SID, 3, 60, MULAW_20MS),
        "media_numbers": json.dumps({"event": "media", "sequenceNumber": 4, "streamSid": SID, "media": {
            "track": "inbound", "chunk": 4, "timestamp": 80, "payload": "f39/fw=="}}),
        "dtmf": twilio.dtmf_message(SID, "#"),
        "mark": json.dumps({"event": "mark", "sequenceNumber": "5", "streamSid": SID, "mark": {"name": "reply-1"}}),
        "stop": twilio.stop_message(SID, "CA" + "2" * 32),
    }


def funasr() -> dict[str, str | bytes]:
    return {
        "client_2pass": StreamConfig(hotwords=("社保卡", "医保")).to_json(),
        "client_offline_8k": json.dumps({"mode": "offline", "chunk_size": "5,10,5", "wav_name": "call",
                                         "audio_fs": 8000, "hotwords": "社保卡 公积金", "is_speaking": True,
                                         "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 1}),
        "client_end": END_OF_SPEECH_JSON,
        "client_finished": '{"is_finished": true}',
        "server_online": RecognitionResult("2pass-online", "社保卡", "hotline", False).to_json(),
        "server_offline": RecognitionResult("2pass-offline", "社保卡丢了怎么办。", "hotline", True).to_json(),
        "server_error": ServerError("audio_fs must be 8000 or 16000").to_json(),
    }


INVITE = ("INVITE sip:12333@10.0.0.5:5060 SIP/2.0\r\n"
          "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n"
          "Max-Forwards: 70\r\n"
          "From: \"Zhang San\" <sip:07732345678@carrier.example>;tag=1928301774\r\n"
          "To: <sip:12333@10.0.0.5>\r\n"
          "{extra}"
          "Call-ID: a84b4c76e66710@carrier.example\r\n"
          "CSeq: 314159 INVITE\r\n"
          "Contact: <sip:07732345678@10.0.0.1:5060;transport=udp>\r\n"
          "Content-Type: application/sdp\r\n"
          "Content-Length: 0\r\n\r\n")


def sip_headers() -> dict[str, str | bytes]:
    return {
        "invite_trunk_pai": INVITE.format(
            extra="P-Asserted-Identity: <sip:+8613812345678@carrier.example;user=phone>, <tel:+8613812345678>\r\n"),
        "invite_from_only": INVITE.format(extra=""),
        "invite_withheld": INVITE.format(extra='P-Asserted-Identity: "Anonymous" <sip:anonymous@anonymous.invalid>\r\n'
                                         "Privacy: id\r\n"),
        "invite_compact_folded": ("INVITE sip:12333@pbx SIP/2.0\r\nf: <sip:139-0000-1111@pbx>\r\n ;tag=9\r\n"
                                  "t: <sip:12333@pbx>\r\nm: <sip:alice@192.168.1.20:5062>\r\n\r\n"),
    }


def audiosocket_stream() -> dict[str, str | bytes]:
    call = uuid.UUID("4f1c2a3e-5b6d-4e7f-8a9b-0c1d2e3f4a5b")
    frame = struct.pack("<160h", *range(-80, 80))
    return {
        "call": (audiosocket.encode_uuid(call) + audiosocket.encode_audio(frame) + audiosocket.encode_dtmf("5")
                 + audiosocket.encode_audio(frame) + audiosocket.encode_hangup()),
        "asterisk_error": audiosocket.encode_uuid(call) + audiosocket.encode_error(audiosocket.ERROR_CALLER_HUNG_UP),
        "unknown_kind": audiosocket.encode_uuid(call) + audiosocket.encode(0x11, frame[:64]),
    }


RECEIPT = b"id:%s sub:001 dlvrd:%s submit date:2501011200 done date:2501011201 stat:%s err:%s text:%s"


def smpp_receipt() -> dict[str, str | bytes]:
    return {
        "delivered": RECEIPT % (b"7A3F", b"001", b"DELIVRD", b"000", "【测试社保】社保卡".encode("utf-16-be")[:20]),
        "undelivered": RECEIPT % (b"0000001b", b"000", b"UNDELIV", b"011", b"Your card"),
        "expired_lower": b"id:12 sub:001 dlvrd:000 submit date:2501011200 done date:2501021200 stat:expired err:000",
    }


def smpp_pdu() -> dict[str, str | bytes]:
    def pdu(command: str, sequence: int, **fields) -> bytes:
        made = smpplib.smpp.make_pdu(command, client=CLIENT, **fields)
        made.sequence = sequence
        return made.generate()

    receipt = smpp_receipt()["delivered"]
    return {
        "deliver_sm_receipt": pdu("deliver_sm", 7, source_addr="13800001111", destination_addr="12333",
                                  esm_class=0x04, short_message=receipt,
                                  receipted_message_id="7A3F", message_state=2),
        "deliver_sm_text_only": pdu("deliver_sm", 8, source_addr="13800001111", destination_addr="12333",
                                    esm_class=0x04,
                                    short_message=smpp_receipt()["undelivered"]),
        "deliver_sm_mo": pdu("deliver_sm", 9, source_addr="13800001111", destination_addr="12333", esm_class=0,
                             short_message=b"hello"),
        "submit_sm_resp": pdu("submit_sm_resp", 3, message_id="7A3F"),
        "generic_nack": pdu("generic_nack", 4, status=0x00000058),
        "enquire_link_resp": pdu("enquire_link_resp", 5),
    }


def sms_reports() -> dict[str, str | bytes]:
    aliyun = [{"phone_number": "1381111****", "send_time": "2017-01-01 00:00:00", "report_time": "2017-01-01 00:00:00",
               "success": True, "err_code": "DELIVERED", "err_msg": "用户接收成功", "sms_size": "1",
               "biz_id": "12345********", "out_id": "67890**"}]
    tencent = [{"user_receive_time": "2015-10-17 08:03:04", "nationcode": "86", "mobile": "13xxxxxxxxx",
                "report_status": "FAIL", "errmsg": "MK:0001", "description": "用户短信未送达", "sid": "xxxxxxx"}]
    return {
        "aliyun": json.dumps(aliyun, ensure_ascii=False, indent=1),
        "tencent": json.dumps(tencent, ensure_ascii=False, indent=1),
        "kannel_delivered": "ref=call-1%2Fcard-loss-report&type=1&status=id%3A7A%20stat%3ADELIVRD%20err%3A000"
                            "&smsc=cmcc&ts=1735700000",
        "kannel_nack": "ref=call-2%2Fmedical&type=16&status=NACK%2F0x00000045%2FSubmit%20failed&smsc=cmcc&ts=1",
    }


def _wav(format_tag: int, channels: int, rate: int, bits: int, samples: bytes, extensible: bool = False) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else format_tag, channels, rate, rate * block, block, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", format_tag) + bytes(14)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"LIST" + struct.pack("<I", 4) + b"INFO"
    chunks += b"data" + struct.pack("<I", len(samples)) + samples + (b"\0" if len(samples) % 2 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def wav() -> dict[str, str | bytes]:
    return {
        "pcm16_8k_mono": _wav(1, 1, 8000, 16, struct.pack("<40h", *range(-2000, 2000, 100))),
        "pcm8_16k_mono": _wav(1, 1, 16000, 8, bytes(range(100, 141))),
        "float32_24k_stereo": _wav(3, 2, 24000, 32, struct.pack("<20f", *[i / 20 - 0.5 for i in range(20)])),
        "extensible_pcm24_mono": _wav(1, 1, 48000, 24, bytes(range(60)), extensible=True),
    }


def main() -> None:
    for name, seeds in {"media_stream": media_stream(), "funasr": funasr(), "sip_headers": sip_headers(),
                        "audiosocket": audiosocket_stream(), "smpp_receipt": smpp_receipt(), "smpp_pdu": smpp_pdu(),
                        "sms_reports": sms_reports(), "wav": wav()}.items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for seed, content in seeds.items():
            (folder / seed).write_bytes(content.encode("utf-8") if isinstance(content, str) else content)


if __name__ == "__main__":
    main()
