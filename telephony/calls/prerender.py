"""Every sentence the dialogue may say that is known before a call: what the TTS cache is filled with at start."""

from __future__ import annotations

from kb.keypad_menu import Menu
from kb.loader import KnowledgeBase
from rag import phrases
from rag.extractive import short_title
from telephony.calls import prompts
from telephony.calls.keypad import menu_texts
from voice.tts import clauses


def fixed_prompts(centre_name: str) -> list[str]:
    return [
        prompts.GREETING.format(centre=centre_name), prompts.ANYTHING_ELSE, prompts.REPEAT_PLEASE,
        prompts.SILENCE_REPROMPT, prompts.SILENCE_GOODBYE, prompts.GOODBYE, prompts.MAX_LENGTH_GOODBYE,
        prompts.NOTHING_TO_REPEAT, prompts.SPEECH_FAILED, prompts.HANDOFF_REGISTERED,
        prompts.VOICE_UNAVAILABLE.format(centre=centre_name), prompts.GREETING_KEYPAD.format(centre=centre_name),
        prompts.MISUNDERSTOOD_HANDOFF, prompts.CRISIS_SELF_HARM_AFTER_HOURS, prompts.CRISIS_ACCIDENT_AFTER_HOURS,
        prompts.QUEUE_NEXT, *(prompts.QUEUE_POSITION.format(ahead=ahead) for ahead in range(1, 10)),
        prompts.QUEUE_TIMEOUT, prompts.NO_AGENT, prompts.AGENT_LOST, prompts.TRANSFER_FAILED,
        phrases.HANDOFF_REQUESTED, phrases.NOT_SURE, phrases.OUT_OF_SCOPE, phrases.EMPTY_QUESTION, phrases.REPHRASE,
        phrases.NOT_HEARD, phrases.ABUSE, phrases.COMPLAINT, phrases.CRISIS_SELF_HARM, phrases.CRISIS_ACCIDENT,
    ]


def prerender_texts(centre_name: str, kb: KnowledgeBase, menu: Menu | None = None) -> list[str]:
    """The fixed prompts, every item's spoken summary, every clarifying question the engine can ask, and every
    sentence of the keypad menu (`menu`), so that a call with no ASR and no TTS engine left still hears its menu.

    「请问您问的是A，还是B？」 can pair any two services that rank close, so each item's two clauses (「请问您问的是A，」
    and 「还是A？」) are cached and any pair is stitched from them (`ResilientTts`); so are the clauses of 「那您问的是C，
    还是D？…」, offered after the caller turns the first two down. Pairs of related items, the
    common case, are also rendered whole, in both orders, for the more natural reading."""
    texts = fixed_prompts(centre_name) + [item.spoken for item in kb.items]
    if menu is not None:
        texts += menu_texts(menu)
    texts += [phrases.CONFIRM_ITEM.format(title=item.title) for item in kb.items]
    # An answer by name (「关于A，…如果您问的是B，请说“另一个”。」) and an answer led by a fact are stitched from the
    # name's clause, the fact's and the summary's clauses, and the offer's clauses.
    for item in kb.items:
        texts += clauses(item.spoken) + [clause for fact in item.facts for clause in clauses(fact.say)]
        texts += clauses(phrases.NAMED_ANSWER.format(title=short_title(item), spoken=""))
        texts += clauses(phrases.OFFER_OTHER.format(title=short_title(item)))
    for item in kb.items:
        texts += clauses(phrases.CHOOSE_ITEMS.format(first=item.title, second=item.title))
        texts += clauses(phrases.CHOOSE_NEXT.format(first=item.title, second=item.title))  # after "都不是"
    for item in kb.items:
        for other in filter(None, (kb.get(related) for related in item.related)):
            texts.append(phrases.CHOOSE_ITEMS.format(first=item.title, second=other.title))
            texts.append(phrases.CHOOSE_ITEMS.format(first=other.title, second=item.title))
    return list(dict.fromkeys(texts))
