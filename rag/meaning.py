"""Whether a caller's text says anything at all: noise, fillers and ASR garbage are asked to be said again.

A phone line turns breathing, background talk and clipped syllables into text such as 「呃嗯那个就是呃」,
「啊啊啊啊」, 「的了吗是在不」 or 「机修时候保守的你」. Retrieval still ranks something for it, usually in the middle
band, so without this check the caller hears a menu or an out-of-scope handoff for words they never said. The check
is deliberately narrow: it runs only on text that names nothing the hotline deals with (`Lexicon.in_domain`) and no
other office's business (`Lexicon.out_of_scope_term`), and it only fires when, fillers and line checks (「喂，听得到不」)
removed, nothing with meaning is left. Off-topic speech with words in it (「桂林米粉哪家最好吃」) is still handed off as
out of scope; scrambled text made of real words (「机修时候保守的你」) is not caught here either.
"""

from __future__ import annotations

import re

# Hesitations, greetings and discourse fillers a caller adds around a question; they carry no meaning of their own.
FILLERS = re.compile(r"那个|这个|就是说|就是|然后|所以说|的话|怎么说呢|你好|您好|喂|听得到|听得见|听到没|听见没|等一下|稍等|"
                     r"[呃嗯啊哦喔噢诶欸唉哎哈嘛呀吧呢么嘞咯哇哟啦哼]")
# Characters that only glue words together: text made of nothing else says nothing.
FUNCTION_CHARS = set("的了吗是在不有个这那他她它我你们就都也还要会能说到上下来去和跟与把被让给对么所以因为")
NUMERALS = re.compile(r"^[0-9零〇幺一二三四五六七八九十百千万两点]+$")
# A short question asks even when it is mostly glue (「在哪」, 「要交吗」, 「多少」): it is a follow-up, not noise.
ASKS = re.compile(r"哪|吗|多少|好多|几|啥|什么|怎|咋|要不要|能不能|可不可以|有没有|没有|不$")
MAX_GLUED = 1  # one content character lost in glue, with no question word: noise (「金那个么的了个呃」)
MIN_MEANINGFUL_CHARS = 2


def core_text(text: str) -> str:
    """The text without punctuation, spaces and fillers."""
    words = re.sub(r"[^\u4e00-\u9fffA-Za-z0-9]", "", text)
    return FILLERS.sub("", words)


def says_nothing(text: str) -> bool:
    """Whether the text, fillers removed, has no meaning to act on: nothing left, one or two sounds repeated
    (「啊啊啊」), numbers alone, only glue characters (「的了吗是在不」), foreign-letter noise, or a few content
    characters lost in glue (「金那个么的了个呃」) with no question word."""
    core = core_text(text)
    if len(core) < MIN_MEANINGFUL_CHARS:
        return True
    if len(set(core)) <= 2 and len(core) >= 3:
        return True
    if NUMERALS.match(core):
        return True
    if all(char in FUNCTION_CHARS for char in core):
        return True
    if not re.search(r"[\u4e00-\u9fff]", core):
        return True
    content = [char for char in core if char not in FUNCTION_CHARS]
    return not ASKS.search(text) and len(content) <= MAX_GLUED


# Words that name social insurance in general or ask in general, but no service: 「我想问一下社保的事」.
GENERAL_WORDS = re.compile(r"社会保险|社保|保险|五险一金|五险|人社|业务|事情|事儿|事|问题|情况|方面|咨询|了解|问一下|问下|想问|请问|"
                           r"打听|我想|我要|想|要|一下|下|关于|有关|的|我|你们|你|问|说|讲|办|个|点|些")


def names_no_service(text: str) -> bool:
    """Whether the text only names social insurance in general (「就是说那个社保」, 「我想咨询一下社保的事情」): the
    caller has not said which service yet, so they are asked, not answered about whatever ranks first."""
    return not GENERAL_WORDS.sub("", core_text(text))
