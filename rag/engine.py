"""The answer engine: human requests, calculators, follow-ups, retrieval, confidence gates, composers."""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from kb.lexicon import Lexicon
from kb.loader import KnowledgeBase
from kb.schema import ServiceItem
from rag import phrases
from rag.base import Action, Answer, ClarifyKind, ConversationContext, HandoffCause, Retriever, ScoredItem
from rag.calculators import calculate
from rag.confidence import ConfidenceModel, score_lead
from rag.extractive import AnswerPolicy, CuratedComposer, item_citations, validate_question
from rag.meaning import names_no_service, says_nothing

log = logging.getLogger(__name__)

# Retrieval's threads, apart from the loop's default executor (which the database's blocking calls can fill when the
# database stalls): a few, since retrieval is mostly CPU work under the GIL and waits only on a network vector index.
_RETRIEVALS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="retrieval")

# Who a caller may ask for instead of the assistant; "X在不在" and "找/叫/跟 … X" both ask for a person.
_PERSON = (r"(同志|工作人员|办事员|负责的|管事的|领导|科长|主任|老师|妹妹|小姐姐|服务台|窗口的人|里面的人|懂的人|"
           r"懂行的人)")
HUMAN_REQUEST = re.compile(
    # 人工 as in 转人工, not inside 工人工伤 / 本人工资 / 老人工伤 / 人工智能
    r"(?<![工本老个家病])人工(?![伤资作龄种程费期时地智])(?!帮[她他])|真人|活人|接线|坐席|客服|话务员|"
    r"转个人|换个人|跟人说|跟人讲|人来接|让人来|有没有人在|"
    r"(找|叫|喊|转|请你们|接到?|让|跟|和|有没有)[^，。？！,]{0,10}" + _PERSON + "|" + _PERSON + r"(在不在|在不|在吗|在没)|"
    r"(找|叫|喊|转|请|接到?)个?(懂的|懂行的|管事的|负责的|专门的)?人(来|接|讲|说|听|嘛|啊|哦|$)|"
    r"不(想|要)(跟|和)?(机器|电脑)|(机器|电脑|录音)[^，。？！,]{0,3}(讲|说|回答)?不(清|懂|了|明)"
)
# Insults and frustration: a person takes over (phrases.ABUSE acknowledges the feeling).
ABUSE = re.compile(r"傻(?!眼)|笨|蠢|他妈的|去死|滚蛋|滚远|混蛋|王八蛋|废物|垃圾|破(系统|机器)|烦死了|烦不烦|气死|闭嘴|"
                   r"懒得跟你|没得用|没有用(?!过)|一点用都")

# Complaints about the bureau, its staff or this line go to a person (phrases.COMPLAINT), and so does a complaint
# with no object. A report about an employer or a labour dispute is not one: 「怎么投诉用人单位不交社保」 and
# 「讨薪去哪里投诉」 ask where to report, the labour inspectorate's business (kb item referral-wage-arrears), and go
# through retrieval like any question. So complaint words count when they are aimed at us (AGAINST_US), or when
# nothing in the question is about an employer or how to report one (SERVICE_REPORT). A false positive costs a
# person's time; a false negative would answer a complaint with a menu.
COMPLAINT = re.compile(
    r"投诉|举报|(?<![报转广公预通劝宣布忠警])告(你们|你|社保局|社保中心|人社局)|起诉(你们|社保局|人社局)|曝光|信访|上访|"
    r"(打|拨|找|去|上)个?(12345|一二三四五|幺二三四五|市长热线|政务热线|政务服务热线)|"
    r"态度(太|很|真|非常|极其|好)?(差|恶劣|冷淡|蛮横|粗暴)|态度(很|太|真|非常)?不好|不作为|踢皮球|推来推去|推三阻四|推诿|"
    r"刁难|吃拿卡要|乱收费")
_US = (r"(你们|你|这边|社保局|社保中心|社保所|人社局|窗口|工作人员|办事员|办事的|经办|热线|客服|接线员|话务员|机器人|"
       r"系统|智能助手)")
_FAULTS = r"(态度|不作为|踢皮球|推来推去|推三阻四|推诿|刁难|吃拿卡要|乱收费)"
AGAINST_US = re.compile(r"(投诉|举报|告|起诉|曝光)(一下)?(你们的?|这个|那个)?" + _US + "|"
                        r"(你们|社保局|社保中心|人社局|窗口|工作人员|办事员|办事的)[^，。？！,]{0,10}" + _FAULTS)
SERVICE_REPORT = re.compile(
    r"用人单位|单位|公司|老板|企业|工厂|厂里|厂子|雇主|包工头|工头|用工|工地|店里|饭店|项目部|"
    r"工资|讨薪|欠薪|辞退|开除|合同|劳动监察|监察|仲裁|"
    r"(哪|哪里|哪儿|哪个部门|什么部门|哪个单位)[^，。？！,]{0,4}(投诉|举报)|(怎么|咋|如何|怎样)(去)?(投诉|举报)")

# Crises go to a person at once; after hours the phone dialogue first says the emergency numbers. Both lists lean
# towards a person: a caller in crisis heard as a service question is the failure that matters.
# Self-harm: words of ending one's own life. 死 alone is not one (死亡待遇, 丧葬费, 人死了个人账户怎么办 are survivor-
# benefit questions), and neither is 自杀 alone: callers ask whether a suicide is a work injury (it is not, 《工伤保险
# 条例》 article 16) or what the family may claim, so 自杀, 跳楼 … count only as intent (我想自杀, 要跳楼, 不如自杀).
CRISIS_SELF_HARM = re.compile(
    r"不想活|活不下去|活不成了|活着没有?意思|活着还?有什么意思|活够了|想死(?!亡)|想去死|寻死|寻短见|轻生|死了算了|不如死了|"
    r"还不如死|一死了之|了结自己|结束自己|结束生命|我(也|就|真)?去死|"
    r"(想|要|准备|打算|干脆|不如|会|去|我)(去)?(自杀|自尽|跳楼|跳河|跳江|跳桥|割腕|上吊|喝农药|吃安眠药)")
# Someone hurt now: a workplace accident as the caller speaks (「工地上有人摔下来了」, 「工友被机器卷进去了」). The same
# words in the past (去年, 上个月, 当时) or with the after-care asked about (工伤认定, 报销, 待遇, 住院) are the service
# questions of the injury items: 「上班受伤了，咋个申请工伤认定」.
_HURT = (r"(摔下来|摔下去|掉下来|掉下去|跌下来|跌下去|摔倒|摔伤|摔断|坠落|卷进|绞进|夹住|夹断|夹到|"
         r"压住|压断|压在|砸到|砸中|砸伤|砸断|砸死|轧断|切断|割断|触电|被电|电到|烧伤|烫伤|炸伤|"
         r"爆炸|着火|晕倒|昏倒|晕过去|昏过去|昏迷|不省人事|倒地|受伤|受了伤|伤到|流血|出血|骨折|"
         r"出车祸|被车撞|撞伤|中毒|窒息)")
HURT = re.compile(_HURT)
HURT_DONE = re.compile(_HURT + r"[^，。？！,]{0,3}了")
EMERGENCY = re.compile(r"救命|救救(他|她|我|我们)|快叫救护车|帮我叫救护车|快打(120|幺二零|一二零)|血流不止|"
                       r"止不住血|满身是血|一身是血|(一直|还|正)?在流血|没气了|没有气了|没有?呼吸了|喊不醒|叫不醒")
HAPPENING_NOW = re.compile(r"现在|刚刚|刚才|正在|就在|这会儿?|眼下|马上|赶紧|快(点|来)")
IN_THE_PAST = re.compile(r"去年|前年|上个?(月|星期|礼拜|周)|前几天|前些天|前段时间|前阵子|那年|那天|"
                         r"那次|当时|以前|之前|年前|月前|天前|早就|已经好了")
AFTER_CARE = re.compile(r"社保|保险|医保|养老|失业|退休|生育|工伤|工亡|因工|职业病|出差|认定|鉴定|申请|报销|能报|"
                        r"报吗|报备|上报|事故报告|赔|待遇|补助|补偿|抚恤|丧葬|备案|备个案|医药费|医疗费|治疗|住院|"
                        r"出院|休假|工资|证明|手续|材料|办理|领")

FOLLOWUP_CUE = re.compile(r"^(那|那么|那个|还有|还要|另外|要是|如果)|^(要|需要)?(带|准备)|^(在哪|去哪|多久|多少钱|要钱吗|收费吗)")
FOLLOWUP_MAX_CHARS = 16
# Score leads (`score_lead`) below 1.0, the lead when there is no runner-up.
VARIANT_LEAD = 0.12  # top two this close and related: ask which one the caller means
CHOICE_LEAD = 0.35  # in the middle band, a runner-up this close is offered as the second choice
# Fixed confidences of replies the confidence model does not score (it scores a retrieval). They are reported with
# the answer and stored with the turn, and say how sure the rule that settled the reply is; no gate reads them.
RULE_CONFIDENCE = 1.0  # a request for a person or an insult: the rule itself is certain
CALCULATED_CONFIDENCE = 0.95  # computed from the caller's own numbers; only the caller's figures can be wrong
DETAILS_CONFIDENCE = 0.9  # the calculator knows the service and asks for the numbers it needs
CHOSEN_CONFIDENCE = 0.9  # the caller picked one of the services offered
FOLLOWUP_MIN_CONFIDENCE = 0.6  # a follow-up on the service answered before is at least this sure
NO_SERVICE_CONFIDENCE = 0.0  # nothing to search for, or the caller turned the offered services down: none is known
# Replies to "您问的是A，还是B？" / "您问的是不是A？".
CHOOSE_FIRST = re.compile(r"第一|前面|前一个|头一个|上一个|第1|前头|前者")
CHOOSE_SECOND = re.compile(r"第二|后面|后一个|第2|后头|后者|下一个")
REJECT = re.compile(r"不是|都不|不对|没有|错了|搞错|别的")
CONFIRM = re.compile(r"^(是|对|嗯|没错|就是|对的|是的|好的|可以|正是|对头|是嘞|是咯)")
CHOICE_REPLY_MAX_CHARS = 12
# Replies to an answer that named its service and offered another (「…如果您问的是B，请说“另一个”」).
OTHER_ONE = re.compile(r"另一个|另外一个|另外那个|另一项|另外一项")
SWITCH = re.compile(OTHER_ONE.pattern + r"|后面那个|后面说的|不是这个|不是问这|不是这项|不是这方面|问的不是|说的不是|"
                    r"我问的是|我说的是|我要问的是|我想问的是|答非所问|答错了|问错了")
SWITCH_REPLY_MAX_CHARS = 16  # a reply up to half this long that says 「不是这个」 switches without naming anything
BOTH_REJECTED = re.compile(r"都不|两个都|也不是")  # 「都不是」 after an answer by name: neither the answer nor the offer
NEXT_CANDIDATES = 2  # offered once after the caller turns both choices down


def is_complaint(text: str) -> bool:
    """A complaint about the bureau or this service (or one with no object), not a report about an employer."""
    return bool(COMPLAINT.search(text)) and bool(AGAINST_US.search(text) or not SERVICE_REPORT.search(text))


def crisis(text: str) -> HandoffCause | None:
    """SELF_HARM, ACCIDENT (someone hurt now), or None."""
    if CRISIS_SELF_HARM.search(text):
        return HandoffCause.SELF_HARM
    if EMERGENCY.search(text):
        return HandoffCause.ACCIDENT
    if IN_THE_PAST.search(text) or AFTER_CARE.search(text) or not HURT.search(text):
        return None
    return HandoffCause.ACCIDENT if HAPPENING_NOW.search(text) or HURT_DONE.search(text) else None


def _turns_down(reply: str) -> bool:
    """A short reply that turns the offered services down ("都不是", "不对")."""
    return bool(REJECT.search(reply)) and len(reply) <= CHOICE_REPLY_MAX_CHARS


def reaches_the_gates(question: str, lexicon: Lexicon | None) -> bool:
    """Whether the confidence gates decide this question. Rules come first: a crisis, a complaint, a request for a
    person, an insult and a question naming nothing the hotline deals with are settled without the confidence model,
    and so is text with no meaning at all (noise, fillers)."""
    if crisis(question) or is_complaint(question) or HUMAN_REQUEST.search(question) or ABUSE.search(question) \
            or says_nothing(question):
        return False
    return lexicon is None or lexicon.in_domain(question)


class AnswerEngine:
    """Implements `Answerer`: decides the action in code and composes the answer."""

    def __init__(self, kb: KnowledgeBase, retriever: Retriever, policy: AnswerPolicy, confidence: ConfidenceModel,
                 llm=None, lexicon: Lexicon | None = None) -> None:
        self.kb = kb
        self.lexicon = lexicon
        self.retriever = retriever
        self.policy = policy
        self.confidence = confidence
        self.curated = CuratedComposer(policy)
        self.llm = llm

    async def answer(self, question: str, context: ConversationContext | None = None) -> Answer:
        question = validate_question(question, self.policy.max_question_chars)
        context = context or ConversationContext()
        # A crisis first (「我不想活了，转人工」 is one), then a complaint (its own queue), 转人工, insults.
        cause = crisis(question)
        if cause is HandoffCause.SELF_HARM:
            return self._handoff(question, phrases.CRISIS_SELF_HARM, RULE_CONFIDENCE, "crisis: self-harm words", cause)
        if cause is HandoffCause.ACCIDENT:
            return self._handoff(question, phrases.CRISIS_ACCIDENT, RULE_CONFIDENCE,
                                 "crisis: someone hurt now (an accident as the caller speaks)", cause)
        if is_complaint(question):
            return self._handoff(question, phrases.COMPLAINT, RULE_CONFIDENCE, "complaint about the service",
                                 HandoffCause.COMPLAINT)
        if HUMAN_REQUEST.search(question):
            return self._handoff(question, phrases.HANDOFF_REQUESTED, RULE_CONFIDENCE, "caller asked for a human",
                                 HandoffCause.ASKED_FOR_HUMAN)
        if ABUSE.search(question):
            return self._handoff(question, phrases.ABUSE, RULE_CONFIDENCE, "abusive language", HandoffCause.ABUSE)

        if context.offers_a_switch:
            switched = await self._resolve_switch(question, context)
            if switched is not None:
                return switched
        elif context.offered_item_ids:
            asked = context.previous_questions[-1] if context.previous_questions else ""
            chosen = await self._resolve_choice(question, context.offered_item_ids, asked)
            if chosen is not None:
                return chosen

        calculated = calculate(question, context.previous_questions)
        if calculated is not None:
            item = self.kb.get(calculated.item_id)
            if calculated.complete and item is not None:
                return self.curated.answer(question, item, CALCULATED_CONFIDENCE, calculated.reason,
                                           spoken=calculated.spoken)
            return Answer(question, Action.CLARIFY, calculated.spoken, "", (), (calculated.item_id,),
                          DETAILS_CONFIDENCE, calculated.reason, ClarifyKind.DETAILS)

        if says_nothing(question):
            return Answer(question, Action.CLARIFY, phrases.NOT_HEARD, "", (), (), NO_SERVICE_CONFIDENCE,
                          "nothing with meaning heard (fillers, noise or ASR garbage)", ClarifyKind.REPEAT)

        if names_no_service(question) and not context.previous_item_ids:
            return Answer(question, Action.CLARIFY, phrases.EMPTY_QUESTION, "", (), (), NO_SERVICE_CONFIDENCE,
                          "social insurance named in general, no service")

        ranked = await self._retrieve(question, 5)
        if not ranked:
            return Answer(question, Action.CLARIFY, phrases.EMPTY_QUESTION, "", (), (), NO_SERVICE_CONFIDENCE,
                          "nothing to search for")
        confidence = self.confidence(ranked)

        previous = self.kb.get(context.previous_item_ids[-1]) if context.previous_item_ids else None
        if previous is not None and self._is_followup(question, ranked, confidence, previous):
            followed = self.curated.followup(question, previous)
            if followed is not None:
                return followed
            return self.curated.answer(question, previous, max(confidence, FOLLOWUP_MIN_CONFIDENCE),
                                       f"follow-up on {previous.id}")
        off_topic = self.lexicon.out_of_scope_term(question) if self.lexicon is not None else None
        if self.lexicon is not None and not self.lexicon.in_domain(question):
            if off_topic is not None:  # named another office's business: repeating it would not help
                return self._handoff(question, phrases.OUT_OF_SCOPE, confidence, f"out of scope: mentions {off_topic}",
                                     HandoffCause.OUT_OF_SCOPE)
            if FOLLOWUP_CUE.search(question) or len(question) <= 6:
                return Answer(question, Action.CLARIFY, phrases.EMPTY_QUESTION, "", (), (), confidence,
                              "no service named and no earlier question to follow")
            return self._handoff(question, phrases.OUT_OF_SCOPE, confidence, "out of scope: no social-insurance term",
                                 HandoffCause.OUT_OF_SCOPE)

        if (off_topic is not None and confidence < self.policy.high_confidence
                and not self.lexicon.names_social_insurance(question)):
            return self._handoff(question, phrases.OUT_OF_SCOPE, confidence, f"out of scope: mentions {off_topic}",
                                 HandoffCause.OUT_OF_SCOPE)

        top = self.kb.get(ranked[0].item_id)
        assert top is not None, "retriever returned an item the KB does not hold"
        if confidence >= self.policy.high_confidence:
            return self.curated.answer(question, top, confidence, self._reason("high", ranked, confidence))
        if confidence < self.policy.low_confidence:
            return self._handoff(question, phrases.NOT_SURE, confidence, self._reason("low", ranked, confidence),
                                 HandoffCause.LOW_CONFIDENCE, items=tuple(scored.item_id for scored in ranked[:3]))
        runner_up = self.kb.get(ranked[1].item_id) if len(ranked) > 1 else None
        if runner_up is not None and runner_up.id in top.ask_between and score_lead(ranked) <= CHOICE_LEAD:
            return self._choose(question, top, runner_up, confidence,
                                self._reason("middle, a pair the caller must choose between", ranked, confidence))
        if confidence >= self.policy.named_confidence:
            reason = self._reason("middle, answer naming the service", ranked, confidence)
            if self.llm is not None and top.fact_for(question) is None:  # a fact asked for is said as written
                answer = await self.llm.answer(question, [self.kb.get(s.item_id) for s in ranked[:3]], confidence,
                                               reason + ", LLM")
                return self.curated.name(answer, top, runner_up)
            return self.curated.named_answer(question, top, runner_up, confidence, reason)
        variant = self._variant_of(top, ranked)
        if variant is not None:
            return self._choose(question, top, variant, confidence,
                                self._reason("middle, variants of one service", ranked, confidence))
        close = self._close_runner_up(ranked)
        if close is not None:
            return self._choose(question, top, close, confidence,
                                self._reason("middle, choose between the two closest", ranked, confidence))
        return self._confirm(question, top, confidence, self._reason("middle, confirm the service", ranked, confidence))

    async def _retrieve(self, query: str, limit: int) -> list[ScoredItem]:
        """The retriever runs in a thread of its own: its vector channel may wait on a network index (up to its
        deadline), and every other call on this worker must go on meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(_RETRIEVALS, partial(self.retriever.retrieve, query,
                                                                                     limit=limit))

    @staticmethod
    def _choose(question: str, first: ServiceItem, second: ServiceItem, confidence: float, reason: str,
                phrase: str = phrases.CHOOSE_ITEMS) -> Answer:
        """「您问的是A，还是B？」: the caller's next reply may pick one (`_resolve_choice`)."""
        offered = (first.id, second.id)
        return Answer(question, Action.CLARIFY, phrase.format(first=first.title, second=second.title), "", (), offered,
                      confidence, reason, ClarifyKind.CHOICE, offered)

    @staticmethod
    def _confirm(question: str, item: ServiceItem, confidence: float, reason: str) -> Answer:
        """「您问的是不是A？」: the caller's next reply may confirm it (`_resolve_choice`)."""
        return Answer(question, Action.CLARIFY, phrases.CONFIRM_ITEM.format(title=item.title), "", (), (item.id,),
                      confidence, reason, ClarifyKind.CONFIRM, (item.id,))

    def _close_runner_up(self, ranked: list[ScoredItem]) -> ServiceItem | None:
        return self.kb.get(ranked[1].item_id) if score_lead(ranked) <= CHOICE_LEAD else None

    async def _resolve_choice(self, reply: str, offered: tuple[str, ...], asked: str = "") -> Answer | None:
        """The caller's reply to a clarifying question (asked after the question `asked`): pick the offered item,
        offer the next candidates when the caller says it was neither, or ask to rephrase.

        None when the reply is a new question rather than a choice (it then goes through the normal path).
        """
        items = [item for item in (self.kb.get(item_id) for item_id in offered) if item is not None]
        if not items:
            return None
        picked: ServiceItem | None = None
        if len(items) >= 2 and CHOOSE_SECOND.search(reply):
            picked = items[1]
        elif CHOOSE_FIRST.search(reply):
            picked = items[0]
        elif _turns_down(reply):
            return await self._next_candidates(reply, offered, asked) or Answer(
                reply, Action.CLARIFY, phrases.REPHRASE, "", (), (), NO_SERVICE_CONFIDENCE,
                "caller rejected the offered services", ClarifyKind.REPHRASE)
        elif CONFIRM.search(reply) and len(items) == 1:
            picked = items[0]
        else:
            # The caller may name one of the offered services ("未成年人那个"); anything whose best match is
            # another service is a new question.
            ranked = await self._retrieve(reply, 1)
            if ranked and ranked[0].item_id in offered and len(reply) <= CHOICE_REPLY_MAX_CHARS:
                picked = self.kb.get(ranked[0].item_id)
        if picked is None:
            return None
        return self.curated.answer(reply, picked, CHOSEN_CONFIDENCE,
                                   f"caller chose {picked.id} from {', '.join(offered)}")

    async def _resolve_switch(self, reply: str, context: ConversationContext) -> Answer | None:
        """The caller's reply to an answer that named its service and offered another: 「另一个」 / 「不是这个」 switch to
        the offer, 「我问的是…」 names the one meant, 「都不是」 gets the next candidates. None for anything else (a
        follow-up on the answer, or a new question: the normal path takes it)."""
        answered, offered = context.previous_item_ids[-1], context.offered_item_ids
        asked = context.previous_questions[-1] if context.previous_questions else ""
        if BOTH_REJECTED.search(reply) and len(reply) <= CHOICE_REPLY_MAX_CHARS:
            return await self._next_candidates(reply, (answered, *offered), asked) or Answer(
                reply, Action.CLARIFY, phrases.REPHRASE, "", (), (), NO_SERVICE_CONFIDENCE,
                "caller rejected the answered and the offered service", ClarifyKind.REPHRASE)
        if not SWITCH.search(reply):
            return None
        ranked = await self._retrieve(reply, 1)
        named = ranked[0].item_id if ranked else None
        if named in offered:
            picked = named
        elif len(reply) <= SWITCH_REPLY_MAX_CHARS // 2 or OTHER_ONE.search(reply):
            picked = offered[0]
        else:
            return None  # 「我问的是X」 naming a service not offered: a new question
        item = self.kb.get(picked)
        if item is None:
            return None
        return self.curated.answer(reply, item, CHOSEN_CONFIDENCE,
                                   f"caller switched from {answered} to the offered {item.id}", asked=asked)

    async def _next_candidates(self, reply: str, offered: tuple[str, ...], asked: str) -> Answer | None:
        """After "都不是": the next two services the first question ranked, once. None when the offered services were
        not that question's top candidates (the caller already turned down a second offer) or nothing is left."""
        if not asked.strip() or _turns_down(asked):
            return None
        ranked = await self._retrieve(asked, len(offered) + NEXT_CANDIDATES)
        if tuple(scored.item_id for scored in ranked[:len(offered)]) != offered:
            return None
        rest = [item for item in (self.kb.get(scored.item_id) for scored in ranked[len(offered):]) if item is not None]
        reason = f"middle, caller rejected {', '.join(offered)}: offer the next candidates"
        if len(rest) >= 2:
            return self._choose(reply, rest[0], rest[1], NO_SERVICE_CONFIDENCE, reason, phrases.CHOOSE_NEXT)
        if rest:
            return self._confirm(reply, rest[0], NO_SERVICE_CONFIDENCE, reason)
        return None

    def _is_followup(self, question: str, ranked: list[ScoredItem], confidence: float, previous: ServiceItem) -> bool:
        """A question about the item asked before, unless it confidently names another service."""
        if ranked and ranked[0].item_id == previous.id:
            return True
        if self.lexicon is not None and self._names_another_service(question, previous):
            return False
        if confidence >= self.policy.high_confidence and len(question) > FOLLOWUP_MAX_CHARS:
            return False
        return bool(FOLLOWUP_CUE.search(question)) or len(question) <= FOLLOWUP_MAX_CHARS

    def _names_another_service(self, question: str, previous: ServiceItem) -> bool:
        """The question names a service (lexicon `service_subjects`) that the item answered before is not about (its
        title and aliases, as written and in standard terms, do not name it)."""
        assert self.lexicon is not None
        named = self.lexicon.subjects(question)
        if not named:
            return False
        about = "\n".join((previous.title, *previous.aliases))
        about += "\n" + self.lexicon.normalize(about)
        return any(term not in about for term in named)

    def _variant_of(self, top: ServiceItem, ranked: list[ScoredItem]) -> ServiceItem | None:
        if score_lead(ranked) > VARIANT_LEAD:
            return None
        second = self.kb.get(ranked[1].item_id)
        if second is None:
            return None
        related = second.id in top.related or top.id in second.related
        return second if related and second.category == top.category else None

    @staticmethod
    def _reason(gate: str, ranked: list[ScoredItem], confidence: float) -> str:
        top = ranked[0]
        runner = f", runner-up {ranked[1].item_id} {ranked[1].score:.3f}" if len(ranked) > 1 else ""
        return (f"{gate} confidence {confidence:.2f}: top {top.item_id} {top.score:.3f} "
                f"(matched {top.matched_alias!r}){runner}")

    @staticmethod
    def _handoff(question: str, spoken: str, confidence: float, reason: str, cause: HandoffCause,
                 items: tuple[str, ...] = ()) -> Answer:
        return Answer(question, Action.HANDOFF, spoken, "", (), items, confidence, reason, handoff=cause)


__all__ = ["AnswerEngine", "item_citations"]
