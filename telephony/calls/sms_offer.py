"""The SMS offer inside a call: after an answer, 「需要把完整的办事指南和政策依据发到您的手机上吗？」; yes or key 1
sends to the caller's own mobile; a landline or withheld number is asked for a mobile number, read back in groups and
confirmed (a correction is accepted); 「再发一遍」 resends the same message. One message per item per call.

The flow holds the call's SMS state and decides what to say; the dialogue speaks it and logs the turn. Sending goes
through an `SmsSender` (the outbox), so a crash, a retry or a second "要" never sends twice."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from rag.base import Action, Answer
from telephony.calls import prompts
from telephony.errors import StorageError, TelephonyError
from telephony.sms.base import SmsError
from telephony.sms.compose import InvalidNumberError, mask, mobile_number
from telephony.sms.outbox import SmsRefused, UnknownSmsError
from telephony.sms.service import SmsService, guide_reference
from voice.session import ReplyKind

log = logging.getLogger(__name__)

_PUNCTUATION = re.compile(r"[\W_]+")
NO = re.compile(r"^(不|别|算了|没必要|免了)")
YES = re.compile(r"^(要|需要|好|可以|行|发|是|对|嗯|麻烦|谢谢|ok|OK|没问题)")
CONFIRM_NO = re.compile(r"^(不对|不是|错了?|说错|不正确)")
CONFIRM_YES = re.compile(r"^(对|是|没错|正确|嗯|好|可以|行)")
RESEND = re.compile(r"(再发一?[遍次下]|重新发|重发|没收到|没有收到)")
# Phone numbers are read digit by digit; 幺 is how 1 is said in a number.
_DIGITS = str.maketrans({"零": "0", "〇": "0", "洞": "0", "幺": "1", "一": "1", "二": "2", "两": "2", "三": "3",
                         "四": "4", "五": "5", "六": "6", "七": "7", "八": "8", "九": "9"})
_SPOKEN_DIGITS = dict(zip("0123456789", "零幺二三四五六七八九"))
MAX_NUMBER_TRIES = 2
YES_NO_MAX_CHARS = 8  # longer than this, an utterance is a new question rather than an answer to the offer


class SmsSendError(TelephonyError):
    """Sending was refused; `spoken` is what the caller hears."""

    def __init__(self, message: str, spoken: str) -> None:
        super().__init__(message)
        self.spoken = spoken


@dataclass(frozen=True)
class SentSms:
    message_id: int
    created: bool  # False: this item's message was already in the outbox for this call


class SmsSender(Protocol):
    """What the flow needs from the outbox (`telephony.sms.service.SmsService` behind an adapter)."""

    def has_guide(self, item_id: str) -> bool: ...

    async def send_guide(self, call_id: str, item_id: str, to: str) -> SentSms: ...

    async def resend(self, message_id: int) -> None: ...


class Stage(StrEnum):
    CONSENT = "consent"  # the offer was made; yes / no / key 1
    NUMBER = "number"  # asking for a mobile number
    CONFIRM = "confirm"  # a number was read back


@dataclass(frozen=True)
class FlowReply:
    """One reply of the flow: what to say and what the turn stores."""

    spoken: str
    reason: str
    done: bool  # the exchange is over: the dialogue goes on with 「请问还有其他问题吗？」
    expect: ReplyKind = ReplyKind.SHORT
    item_ids: tuple[str, ...] = ()
    consent: bool | None = None
    sms_to: str | None = None  # masked
    message_id: int | None = None
    caller_text: str | None = None  # replaces the transcript when it held a phone number (masked)


ABSORBED = FlowReply("", "digit kept", done=False)  # a keypad digit of a number being entered: nothing to say yet


def digits_in(text: str) -> str:
    return "".join(ch for ch in text.translate(_DIGITS) if ch.isdigit())


def read_back(number: str) -> str:
    """"13800001111" → 「幺三八，零零零零，幺幺幺幺」 (3-4-4, the way numbers are read in China)."""
    groups = [number[:3], number[3:7], number[7:]] if len(number) == 11 else [number]
    return "，".join("".join(_SPOKEN_DIGITS[d] for d in group) for group in groups if group)


def _masked_text(text: str) -> str:
    digits = digits_in(text)
    return f"（号码 {mask(digits)}）" if len(digits) >= 7 else text


class SmsOfferFlow:
    def __init__(self, sender: SmsSender, call_id: str | None, caller_number: str | None) -> None:
        self.sender = sender
        self.call_id = call_id
        self.caller_mobile = _mobile_or_none(caller_number)
        self.stage: Stage | None = None
        self.item_id: str | None = None
        self.confirmed_number: str | None = None  # a number the caller gave and confirmed in this call
        self._candidate: str | None = None
        self._keyed = ""
        self._tries = 0
        self.sent: dict[str, int] = {}  # item id → outbox message id, in this call
        self._last_to: str | None = None

    @property
    def pending(self) -> bool:
        return self.stage is not None

    def offer(self, answer: Answer) -> str | None:
        """The offer to say after an answer, or None (nothing to send, already sent, no call record)."""
        self.stage = None
        if answer.action is not Action.ANSWER or not answer.items or self.call_id is None:
            return None
        item_id = answer.items[0]
        if item_id in self.sent or not self.sender.has_guide(item_id):
            return None
        self.item_id, self.stage = item_id, Stage.CONSENT
        return prompts.SMS_OFFER

    def lapse(self) -> None:
        self.stage = None
        self._keyed = ""

    # -- the caller's reply ------------------------------------------------------------------------

    async def on_utterance(self, text: str) -> FlowReply | None:
        """The flow's reply, or None when the utterance is not for it (a new question: the offer lapses)."""
        letters = _PUNCTUATION.sub("", text)
        if RESEND.search(letters):
            return await self._resend()
        if self.stage is Stage.CONSENT:
            if len(letters) <= YES_NO_MAX_CHARS and NO.match(letters):
                self.lapse()
                return FlowReply(prompts.SMS_DECLINED, "caller declined the SMS", True, ReplyKind.QUESTION,
                                 (self.item_id,) if self.item_id else (), consent=False)
            if len(letters) <= YES_NO_MAX_CHARS and YES.match(letters):
                return await self._consented()
            self.lapse()
            return None
        if self.stage is Stage.NUMBER:
            return await self._number_given(digits_in(letters), text)
        if self.stage is Stage.CONFIRM:
            digits = digits_in(letters)
            if len(digits) >= 7:  # 「不对，是139……」: a corrected number
                return await self._number_given(digits, text)
            if CONFIRM_NO.match(letters):
                self.stage = Stage.NUMBER
                return FlowReply(prompts.SMS_ASK_NUMBER_AGAIN, "caller said the number was wrong", False,
                                 ReplyKind.QUESTION, (self.item_id,) if self.item_id else ())
            if CONFIRM_YES.match(letters):
                self.confirmed_number = self._candidate
                return await self._send(self._candidate or "")
            self.lapse()
            return None
        return None

    async def on_key(self, digit: str) -> FlowReply | None:
        if self.stage is Stage.CONSENT:
            if digit == "1":
                return await self._consented()
            if digit == "2":
                self.lapse()
                return FlowReply(prompts.SMS_DECLINED, "caller declined the SMS (key 2)", True, ReplyKind.QUESTION,
                                 (self.item_id,) if self.item_id else (), consent=False)
            return None
        if self.stage is Stage.NUMBER:
            if digit == "*":
                self._keyed = ""
                return FlowReply(prompts.SMS_ASK_NUMBER_AGAIN, "number entry cleared", False, ReplyKind.QUESTION)
            if digit == "#" or (digit.isdigit() and len(self._keyed) + 1 >= 11):
                keyed = self._keyed + (digit if digit.isdigit() else "")
                self._keyed = ""
                return await self._number_given(keyed, f"按键输入 {keyed}")
            if digit.isdigit():
                self._keyed += digit
                return ABSORBED
            return None
        if self.stage is Stage.CONFIRM:
            if digit == "1":
                self.confirmed_number = self._candidate
                return await self._send(self._candidate or "")
            if digit == "2":
                self.stage = Stage.NUMBER
                return FlowReply(prompts.SMS_ASK_NUMBER_AGAIN, "caller said the number was wrong (key 2)", False,
                                 ReplyKind.QUESTION)
        return None

    # -- steps -------------------------------------------------------------------------------------

    async def _consented(self) -> FlowReply:
        number = self.confirmed_number or self.caller_mobile
        if number is not None:
            return await self._send(number)
        self.stage, self._tries, self._keyed = Stage.NUMBER, 0, ""
        return FlowReply(prompts.SMS_ASK_NUMBER, "caller consented; the caller ID is not a mobile number", False,
                         ReplyKind.QUESTION, (self.item_id,) if self.item_id else (), consent=True)

    async def _number_given(self, digits: str, heard: str) -> FlowReply:
        items = (self.item_id,) if self.item_id else ()
        try:
            number = mobile_number(digits)
        except InvalidNumberError:
            self._tries += 1
            if self._tries >= MAX_NUMBER_TRIES:
                self.lapse()
                return FlowReply(prompts.SMS_NUMBER_GIVE_UP, "no valid mobile number after two tries", True,
                                 ReplyKind.QUESTION, items, consent=True, caller_text=_masked_text(heard))
            self.stage = Stage.NUMBER
            return FlowReply(prompts.SMS_BAD_NUMBER, "not a mobile number", False, ReplyKind.QUESTION, items,
                             caller_text=_masked_text(heard))
        self._candidate, self.stage = number, Stage.CONFIRM
        return FlowReply(prompts.SMS_CONFIRM_NUMBER.format(digits=read_back(number)), "number read back", False,
                         ReplyKind.SHORT, items, sms_to=mask(number), caller_text=_masked_text(heard))

    async def _send(self, number: str) -> FlowReply:
        item_id = self.item_id or ""
        self.lapse()
        try:
            sent = await self.sender.send_guide(self.call_id or "", item_id, number)
        except SmsSendError as exc:
            log.warning("call %s: SMS for %s not sent: %s", self.call_id, item_id, exc)
            return FlowReply(exc.spoken, f"SMS refused: {exc}", True, ReplyKind.QUESTION, (item_id,),
                             consent=True, sms_to=mask(number))
        self.sent[item_id] = sent.message_id
        self._last_to = number
        return FlowReply(prompts.SMS_SENT.format(tail=number[-4:]),
                         "SMS queued" if sent.created else "SMS already in the outbox for this item", True,
                         ReplyKind.QUESTION, (item_id,), consent=True, sms_to=mask(number),
                         message_id=sent.message_id)

    async def _resend(self) -> FlowReply:
        if not self.sent:
            if self.stage is Stage.CONSENT:
                return await self._consented()
            return FlowReply(prompts.SMS_NOTHING_TO_RESEND, "resend asked, nothing sent yet", True, ReplyKind.QUESTION)
        item_id, message_id = list(self.sent.items())[-1]
        self.lapse()
        try:
            await self.sender.resend(message_id)
        except SmsSendError as exc:
            return FlowReply(exc.spoken, f"resend refused: {exc}", True, ReplyKind.QUESTION, (item_id,))
        tail = (self._last_to or "")[-4:]
        return FlowReply(prompts.SMS_RESENT.format(tail=tail), "SMS resent (same message)", True, ReplyKind.QUESTION,
                         (item_id,), consent=True, sms_to=mask(self._last_to or ""), message_id=message_id)


def _mobile_or_none(number: str | None) -> str | None:
    if not number:
        return None
    try:
        return mobile_number(number)
    except (InvalidNumberError, SmsError):
        return None


class OutboxSender:
    """Implements `SmsSender` over the SMS service; turns its refusals into what the caller hears."""

    def __init__(self, service: SmsService, centre_phone: str) -> None:
        self.service = service
        self.centre_phone = centre_phone

    def has_guide(self, item_id: str) -> bool:
        try:
            return bool(self.service.item(item_id).sms.strip())
        except SmsError:
            return False

    async def send_guide(self, call_id: str, item_id: str, to: str) -> SentSms:
        try:
            enqueued = await self.service.send_guide(to, item_id, guide_reference(call_id, item_id), call_id=call_id)
        except SmsRefused as exc:
            raise SmsSendError(str(exc), prompts.SMS_LIMIT) from exc
        except (SmsError, StorageError) as exc:
            raise SmsSendError(str(exc), prompts.SMS_UNAVAILABLE.format(phone=self.centre_phone)) from exc
        return SentSms(enqueued.message.id, enqueued.created)

    async def resend(self, message_id: int) -> None:
        try:
            await self.service.resend(message_id)
        except SmsRefused as exc:
            raise SmsSendError(str(exc), prompts.SMS_LIMIT) from exc
        except (SmsError, StorageError, UnknownSmsError) as exc:
            raise SmsSendError(str(exc), prompts.SMS_UNAVAILABLE.format(phone=self.centre_phone)) from exc
