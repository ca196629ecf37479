"""The keypad menu: the editors' file and its rules, the menu as a state machine on keys, and the dialogue that offers
it when speech recognition is down or twice heard nothing (scripted caller events, the real answer engine, SQLite)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from kb.check import check_knowledge_base
from kb.keypad_menu import (
    DEFAULT_MENU_FILE,
    KeypadMenuError,
    Menu,
    load_menu,
    menu_problems,
    parse_menu,
    resolve_menu,
)
from kb.loader import KnowledgeBase, load_knowledge_base
from telephony.app import Hotline, call_config
from telephony.calls import prompts
from telephony.calls.dialogue import CallParty, CallSession
from telephony.calls.keypad import KeypadMenu, area_options, menu_texts, top_options
from telephony.calls.prerender import prerender_texts
from telephony.calls.sms_offer import OutboxSender, SmsOfferFlow
from telephony.calls.turn_log import TurnLog
from telephony.handoff.callback import CallbackTickets
from telephony.settings import Settings
from telephony.store import CallChannel, SmsKind
from tests.test_call_session import ScriptedCall, ScriptedSpeech, TranscriptTts, VirtualTime, utterance
from tests.test_cli import run as run_cli
from voice.session import DtmfPressed

CENTRE = "测试社保中心"


@pytest.fixture(scope="module")
def shipped() -> KnowledgeBase:
    return load_knowledge_base()


def shipped_data() -> dict:
    return yaml.safe_load(DEFAULT_MENU_FILE.read_text(encoding="utf-8"))


# -- the file and its rules ----------------------------------------------------------------------


def test_the_shipped_menu_covers_the_main_areas_with_items_that_exist(shipped: KnowledgeBase) -> None:
    menu_file = load_menu()
    assert menu_problems(menu_file, shipped) == []
    menu, problems = resolve_menu(menu_file, shipped)
    assert problems == []
    assert [(area.key, area.label) for area in menu.areas][:4] == [("1", "社保卡"), ("2", "养老保险"), ("3", "工伤"),
                                                                   ("4", "失业")]
    card = menu.area("1")
    assert card is not None and card.service("3") is not None
    activation = card.service("3")
    assert (activation.item_id, activation.label) == ("card-activation", "启用激活")
    # A service is read with the item's own spoken summary, the sentence the engine answers it with.
    assert activation.spoken == shipped.get("card-activation").spoken
    # Without a label, a short title is said as it is.
    injury = menu.area("3")
    assert injury is not None and injury.service("1").label == shipped.get("injury-recognition").title == "工伤认定申请"
    assert all(len(area.services) <= 8 for area in menu.areas) and len(menu.areas) <= 8


def broken(change) -> dict:
    data = copy.deepcopy(shipped_data())
    change(data)
    return data


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["areas"][0].update(key=0), "area 1: key 0 is reserved (人工); use 1-8"),
    (lambda d: d["areas"][0].update(key=9), "area 1: key 9 is reserved (返回上一级); use 1-8"),
    (lambda d: d["areas"][0]["services"][0].update(key="*"), "area 1 (社保卡), service 1: key * is reserved (重听)"),
    (lambda d: d["areas"][1].update(key=1), "areas: key 1 is used twice"),
    (lambda d: d["areas"][0]["services"][1].update(key=1), "area 1 (社保卡): key 1 is used twice"),
    (lambda d: d["areas"][0]["services"][1].update(item="card-loss-report"),
     "area 1 (社保卡): item card-loss-report is listed twice"),
    (lambda d: d["areas"].extend(copy.deepcopy(d["areas"][:3])), "areas: 9 areas, at most 8 (keys 1-8)"),
    (lambda d: d["areas"][0]["services"].extend({"key": 8, "item": f"x-{n}"} for n in range(2)),
     "area 1 (社保卡): 9 services, at most 8 (keys 1-8)"),
    (lambda d: d["areas"][0].update(categories=["医保"]), "area 1 (社保卡): unknown category '医保'"),
    (lambda d: d["areas"][0].update(label="社会保障卡的各种业务办理"),
     "label '社会保障卡的各种业务办理' has 12 characters, limit 10"),
    (lambda d: d["areas"][0].update(label="社保，卡"), "must not contain punctuation"),
    (lambda d: d["areas"][0]["services"][0].update(say="挂失"), "unknown field(s) say"),
    (lambda d: d["areas"][0].pop("services"), "area 1: missing services"),
    (lambda d: d["areas"][0].update(key=10), "area 1: key must be one of 1-8, got 10"),
])
def test_a_broken_menu_file_is_refused_with_the_entry_named(change, message: str) -> None:
    with pytest.raises(KeypadMenuError) as caught:
        parse_menu(broken(change), "kb/keypad_menu.yaml")
    assert str(caught.value).startswith("kb/keypad_menu.yaml: ")
    assert message in str(caught.value)


def test_the_menu_is_checked_against_the_knowledge_base(shipped: KnowledgeBase) -> None:
    data = shipped_data()
    services = data["areas"][0]["services"]
    services[0]["item"] = "card-nowhere"  # no such item
    services[1]["item"] = "injury-recognition"  # an item of another category
    services[2] = {"key": 3, "item": "card-activation"}  # a title too long to say in a menu, and no label
    menu_file = parse_menu(data, "menu.yaml")
    assert menu_problems(menu_file, shipped) == [
        "menu.yaml: area 1 (社保卡), service 1: item 'card-nowhere' does not exist",
        "menu.yaml: area 1 (社保卡), service 2: item injury-recognition is in category 工伤保险, not in the area's "
        "社会保障卡",
        "menu.yaml: area 1 (社保卡), service 3: item card-activation's title "
        "'社会保障卡启用（社保功能、金融功能激活）' is longer than 10 characters: give the service a label"]
    # A call still gets a menu: what breaks a rule is left out (and logged by the runner).
    menu, problems = resolve_menu(menu_file, shipped)
    assert len(problems) == 3 and [service.key for service in menu.area("1").services] == ["4", "5", "6", "7"]


def test_kb_check_reports_a_bad_menu_file(tmp_path: Path, shipped: KnowledgeBase) -> None:
    bad = tmp_path / "keypad_menu.yaml"
    bad.write_text(yaml.safe_dump(broken(lambda d: d["areas"][2]["services"][0].update(item="injury-nowhere")),
                                  allow_unicode=True), encoding="utf-8")
    report = check_knowledge_base(shipped, keypad_menu=bad)
    assert report.errors == [f"{bad}: area 3 (工伤), service 1: item 'injury-nowhere' does not exist"]
    assert check_knowledge_base(shipped, keypad_menu=DEFAULT_MENU_FILE).errors == []
    # The command an editor runs: `hotline kb check` reads the file the settings name and fails on it.
    unparsable = tmp_path / "unparsable.yaml"
    unparsable.write_text(yaml.safe_dump(broken(lambda d: d["areas"][0].update(key=9)), allow_unicode=True),
                          encoding="utf-8")
    for path, message in ((bad, "item 'injury-nowhere' does not exist"), (unparsable, "key 9 is reserved")):
        result = run_cli(["kb", "check"], tmp_path, HOTLINE_KEYPAD_MENU_FILE=str(path))
        assert result.returncode == 1, result.stderr
        assert f"error: {path}: " in result.stdout and message in result.stdout


# -- the menu as a state machine -----------------------------------------------------------------


@pytest.fixture(scope="module")
def menu(shipped: KnowledgeBase) -> Menu:
    return resolve_menu(load_menu(), shipped)[0]


def test_the_prompts_are_built_from_the_menu_data(menu: Menu) -> None:
    assert top_options(menu) == "1 社保卡，2 养老保险，3 工伤，4 失业，5 缴费查询，6 参保转移，0 人工。"
    card = menu.area("1")
    assert area_options(card) == ("1 挂失解挂，2 补领换领，3 启用激活，4 密码修改重置，5 制卡进度查询，6 首次申领，"
                                  "7 电子社保卡，9 返回上一级，0 人工。")


def test_keys_walk_the_two_levels(menu: Menu, shipped: KnowledgeBase) -> None:
    keypad = KeypadMenu(menu)
    assert keypad.open() == (prompts.MENU_CHOOSE, top_options(menu))
    step = keypad.on_key("2")
    assert step.texts == ("养老保险，请按键选择：", area_options(menu.area("2"))) and step.service is None
    step = keypad.on_key("1")
    assert step.service is not None and step.service.item_id == "normal-retirement-application"
    assert step.texts == (shipped.get("normal-retirement-application").spoken,)
    assert "养老保险 / 退休申请" in step.reason
    # * repeats the summary with how to go on; another key of the same area chooses another service.
    assert keypad.on_key("*").texts == (step.service.spoken, prompts.MENU_AFTER_SERVICE)
    assert keypad.on_key("2").service.item_id == "retirement-age-query"
    # A key that chooses nothing says so and repeats the level; 9 goes back to the areas.
    assert keypad.on_key("8").texts == (prompts.MENU_NO_SUCH_KEY, area_options(menu.area("2")))
    assert keypad.on_key("9").texts == (prompts.MENU_CHOOSE, top_options(menu)) and keypad.area is None
    assert keypad.on_key("7").texts == (prompts.MENU_NO_SUCH_KEY, top_options(menu))
    assert keypad.on_key("*").texts == (prompts.MENU_NO_SUCH_KEY, top_options(menu))
    assert keypad.on_key("9").texts == (prompts.MENU_CHOOSE, top_options(menu))
    # 0 asks for a person at either level.
    assert keypad.on_key("0").person
    keypad.on_key("3")
    assert keypad.on_key("0").person and keypad.area is not None


def test_every_menu_sentence_is_prerendered(menu: Menu, shipped: KnowledgeBase) -> None:
    texts = set(prerender_texts(CENTRE, shipped, menu))
    assert set(menu_texts(menu)) <= texts
    assert {prompts.GREETING_KEYPAD.format(centre=CENTRE), prompts.VOICE_UNAVAILABLE.format(centre=CENTRE),
            prompts.MENU_UNHEARD, prompts.SMS_OFFER_KEYS, prompts.MENU_AFTER_SERVICE} <= texts
    assert {"工伤，请按键选择：", area_options(menu.area("3"))} <= texts
    assert all(service.spoken in texts for area in menu.areas for service in area.services)


# -- in the dialogue -----------------------------------------------------------------------------


@pytest.fixture
def hotline(settings: Settings) -> Hotline:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Hotline.open(settings)


def keypad_call(hotline: Hotline, *events, caller: str | None = "13812345678", asr_unavailable: str | None = None,
                with_menu: bool = True, reprompts: int = 0) -> ScriptedCall:
    call_id = hotline.database.start_call(CallChannel.SIP, caller).id
    speech, tts, hangups, time = ScriptedSpeech(), TranscriptTts(), [], VirtualTime()
    turn_log = TurnLog(hotline.writer, CallChannel.SIP, call_id)

    async def hang_up() -> None:
        hangups.append("hung up")

    flow = SmsOfferFlow(OutboxSender(hotline.sms, hotline.settings.centre_phone), call_id, caller)
    dialogue = replace(call_config(hotline.settings).dialogue, centre_name=CENTRE, no_speech_timeout_ms=2000,
                       no_speech_reprompts=reprompts)
    keypad = KeypadMenu(resolve_menu(load_menu(), hotline.answers.kb)[0]) if with_menu else None
    session = CallSession(CallParty(call_id, caller), speech, tts, hotline.answers, dialogue,
                          CallbackTickets(hotline.database, hotline.sms), observers=(turn_log,), hangup=hang_up,
                          sms=flow, clock=time.now, sleep=time.sleep, keypad=keypad, asr_unavailable=asr_unavailable)
    for event in events:
        speech.events.put_nowait(utterance(event) if isinstance(event, str) else DtmfPressed(str(event), 0.0))
    return ScriptedCall(session, speech, tts, turn_log, hangups)


async def run(hotline: Hotline, call: ScriptedCall):
    reason = await call.session.run()
    await call.turn_log.flush()
    return reason, hotline.database.get_call(call.session.party.call_id)


async def test_without_asr_the_caller_chooses_a_service_gets_the_sms_and_reaches_a_person(hotline: Hotline) -> None:
    kb = hotline.answers.kb
    call = keypad_call(hotline, 2, 1, 1, 0, asr_unavailable="no model")
    reason, stored = await run(hotline, call)
    menu = call.session.keypad.menu
    retirement = kb.get("normal-retirement-application")
    [ticket] = stored.handoff_tickets
    assert reason == "handoff" and call.hangups == ["hung up"]
    assert call.tts.said == [
        prompts.GREETING_KEYPAD.format(centre=CENTRE), top_options(menu),  # no ticket and no hang-up at once
        "养老保险，请按键选择：", area_options(menu.area("2")),
        retirement.spoken, prompts.SMS_OFFER_KEYS,
        prompts.SMS_SENT.format(tail="5678"), prompts.MENU_AFTER_SERVICE,
        prompts.HANDOFF_REGISTERED_SMS.format(ticket=ticket.id)]
    [guide] = [message for message in hotline.sms.outbox.listing() if message.kind is SmsKind.GUIDE]
    assert guide.item_id == "normal-retirement-application" and guide.phone == "13812345678"
    # Pressing 0 with no ASR is recorded as the ASR being unavailable, the key named in the reason.
    assert ticket.trigger == "asr_unavailable" and ticket.callback_number == "13812345678"
    assert ticket.reason == "caller pressed 0 in the keypad menu (ASR unavailable: no model)"
    # One row per thing the caller did.
    assert [(turn.caller_text, turn.action) for turn in stored.turns] == [
        ("按键2", "menu"), ("按键1", "menu"), ("按键1", "sms"), ("按键0", "handoff")]
    chosen = stored.turns[1]
    assert chosen.item_ids == ["normal-retirement-application"]
    assert chosen.spoken_text == retirement.spoken + prompts.SMS_OFFER_KEYS
    assert stored.turns[2].sms_consent is True and stored.turns[2].sms_message_id == guide.id


async def test_without_asr_silence_repeats_the_menu_then_ends_politely(hotline: Hotline) -> None:
    call = keypad_call(hotline, 1, 9, asr_unavailable="no model", reprompts=1)
    reason, stored = await run(hotline, call)
    menu = call.session.keypad.menu
    assert reason == "no_speech" and call.hangups == ["hung up"]
    assert call.tts.said[2:] == ["社保卡，请按键选择：", area_options(menu.area("1")),
                                 prompts.MENU_CHOOSE, top_options(menu),  # key 9: back to the areas
                                 prompts.MENU_CHOOSE, top_options(menu),  # no key within the timeout
                                 prompts.SILENCE_GOODBYE]
    assert stored.handoff_tickets == [] and [turn.action for turn in stored.turns] == ["menu", "menu"]


async def test_without_asr_and_without_a_menu_the_caller_goes_to_a_person(hotline: Hotline) -> None:
    call = keypad_call(hotline, asr_unavailable="connection refused", with_menu=False)
    reason, stored = await run(hotline, call)
    [ticket] = stored.handoff_tickets
    assert reason == "handoff" and ticket.trigger == "asr_unavailable"
    assert ticket.reason == "ASR unavailable: connection refused"
    assert call.tts.said == [prompts.VOICE_UNAVAILABLE.format(centre=CENTRE),
                             prompts.HANDOFF_REGISTERED_SMS.format(ticket=ticket.id)]


async def test_two_unrecognised_turns_open_the_menu_and_a_recognised_question_leaves_it(hotline: Hotline) -> None:
    call = keypad_call(hotline, "", "嗯", 4, 1, 2, "那要带什么材料", "不用了", "没有了")
    reason, stored = await run(hotline, call)
    menu = call.session.keypad.menu
    benefit = hotline.answers.kb.get("unemployment-benefit-application")
    said = call.tts.said
    assert said[1] == prompts.REPEAT_PLEASE  # the first time: asked again
    assert said[2:4] == [prompts.MENU_UNHEARD, top_options(menu)]  # the second time: the keypad menu
    assert said[4:6] == ["失业，请按键选择：", area_options(menu.area("4"))]
    assert said[6:8] == [benefit.spoken, prompts.SMS_OFFER_KEYS]
    assert said[8:10] == [prompts.SMS_DECLINED, prompts.MENU_AFTER_SERVICE]  # key 2 declines the SMS
    # Speech recognised later is answered as usual, out of the menu: here a follow-up on the service chosen by key.
    assert said[10].startswith("本人社会保障卡或居民身份证") and said[11] == prompts.SMS_OFFER
    assert said[12:] == [prompts.SMS_DECLINED, prompts.ANYTHING_ELSE, prompts.GOODBYE] and reason == "caller_done"
    assert not call.session.in_menu
    assert [turn.action for turn in stored.turns] == ["repeat", "menu", "menu", "menu", "sms", "answer", "sms",
                                                      "goodbye"]
    assert stored.turns[1].reason == "nothing recognised twice in a row: keypad menu"
    assert stored.turns[5].item_ids == [benefit.id] and "section 所需材料" in stored.turns[5].reason
    assert hotline.sms.outbox.listing() == [] and stored.handoff_tickets == []


async def test_key_zero_in_a_menu_opened_by_unheard_turns_is_key_0(hotline: Hotline) -> None:
    call = keypad_call(hotline, "", "", 0)
    reason, stored = await run(hotline, call)
    [ticket] = stored.handoff_tickets
    assert reason == "handoff" and ticket.trigger == "key_0"
    assert ticket.reason == "caller pressed 0 in the keypad menu"


async def test_an_understood_turn_resets_the_count_of_unheard_ones(hotline: Hotline) -> None:
    call = keypad_call(hotline, "", "社保卡丢了怎么办", "不用了", "", "没有了")
    reason, _stored = await run(hotline, call)
    assert prompts.MENU_UNHEARD not in call.tts.said and call.tts.said.count(prompts.REPEAT_PLEASE) == 2
    assert reason == "caller_done"
