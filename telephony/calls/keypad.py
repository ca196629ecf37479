"""The keypad menu inside a call: a pure state machine on the caller's key presses that says what to say next.

Two levels, as the KB editors keep them (kb/keypad_menu.yaml): 1-8 choose an area, then 1-8 choose one of its
services, whose spoken summary is read; 9 goes back to the areas, * repeats what was said last, 0 asks for a person.
The dialogue (`CallSession`) speaks the replies, offers the SMS guide after a service and logs each key as a turn;
the sentences are built from the menu's labels and the fixed words in `prompts`."""

from __future__ import annotations

from dataclasses import dataclass

from kb.keypad_menu import Menu, MenuArea, MenuService
from telephony.calls import prompts

BACK_KEY = "9"
REPEAT_KEY = "*"
PERSON_KEY = "0"


@dataclass(frozen=True)
class MenuStep:
    """One reply of the menu: what to say (each text said and cached on its own) and what the turn stores."""

    texts: tuple[str, ...]
    reason: str
    service: MenuService | None = None  # a service was chosen: `texts` is its spoken summary
    person: bool = False  # key 0: the dialogue hands the caller to a person


def top_options(menu: Menu) -> str:
    """「1 社保卡，2 养老保险，…，0 人工。」"""
    return "，".join([prompts.MENU_OPTION.format(key=area.key, label=area.label) for area in menu.areas]
                    + [prompts.MENU_TOP_END])


def area_options(area: MenuArea) -> str:
    """「1 挂失解挂，2 补领换领，…，9 返回上一级，0 人工。」"""
    return "，".join([prompts.MENU_OPTION.format(key=service.key, label=service.label) for service in area.services]
                    + [prompts.MENU_AREA_END])


def menu_texts(menu: Menu) -> list[str]:
    """Every sentence the menu can say that is known before a call (the TTS cache is filled with them); the services'
    spoken summaries are the items' own, prerendered with every item."""
    texts = [prompts.MENU_CHOOSE, prompts.MENU_UNHEARD, prompts.MENU_NO_SUCH_KEY, prompts.MENU_AFTER_SERVICE,
             top_options(menu)]
    # The SMS offer by key after a service, and its fixed replies (a number being keyed in).
    texts += [prompts.SMS_OFFER_KEYS, prompts.SMS_DECLINED, prompts.SMS_ASK_NUMBER, prompts.SMS_ASK_NUMBER_AGAIN,
              prompts.SMS_BAD_NUMBER, prompts.SMS_NUMBER_GIVE_UP, prompts.SMS_LIMIT]
    for area in menu.areas:
        texts += [prompts.MENU_AREA.format(label=area.label), area_options(area)]
        texts += [service.spoken for service in area.services]
    return texts


class KeypadMenu:
    """Where the caller is in the menu (the areas, or one area's services) and what was said last."""

    def __init__(self, menu: Menu) -> None:
        self.menu = menu
        self.area: MenuArea | None = None
        self.last: tuple[str, ...] = ()

    def open(self, lead: str = prompts.MENU_CHOOSE) -> tuple[str, ...]:
        """Back to the areas: `lead` (「请按键选择：」, 「抱歉，我没有听清。请用电话按键选择：」) and the areas;
        * repeats them after 「请按键选择：」."""
        self.area = None
        self.last = (prompts.MENU_CHOOSE, top_options(self.menu))
        return lead, self.last[1]

    def options(self) -> str:
        """The options of the level the caller is on."""
        return area_options(self.area) if self.area is not None else top_options(self.menu)

    def prompt(self, lead: str = prompts.MENU_CHOOSE) -> tuple[str, ...]:
        """The level's options again, after `lead` (a timeout, a key that chooses nothing, speech not heard)."""
        return lead, self.options()

    def on_key(self, digit: str) -> MenuStep:
        if digit == PERSON_KEY:
            return MenuStep((), "key 0: to a person", person=True)
        if digit == REPEAT_KEY:
            return MenuStep(self.last or self.prompt(), "key *: repeated")
        if self.area is None:
            area = self.menu.area(digit)
            if area is None:
                if digit == BACK_KEY:
                    return MenuStep(self._said(self.prompt()), "key 9 at the top of the menu: areas repeated")
                return MenuStep(self._said(self.prompt(prompts.MENU_NO_SUCH_KEY)), f"key {digit}: no such area")
            self.area = area
            return MenuStep(self._said((prompts.MENU_AREA.format(label=area.label), area_options(area))),
                            f"key {digit}: area {area.label}")
        if digit == BACK_KEY:
            return MenuStep(self.open(), "key 9: back to the areas")
        service = self.area.service(digit)
        if service is None:
            return MenuStep(self._said(self.prompt(prompts.MENU_NO_SUCH_KEY)),
                            f"key {digit}: no such service in {self.area.label}")
        self.last = (service.spoken, prompts.MENU_AFTER_SERVICE)
        return MenuStep((service.spoken,), f"key {digit}: {self.area.label} / {service.label} ({service.item_id})",
                        service)

    def _said(self, texts: tuple[str, ...]) -> tuple[str, ...]:
        self.last = texts
        return texts
