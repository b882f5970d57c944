"""Closed/open answer type and taxonomy category of a unified row.

Two steps, each preferring what the dataset itself says:

1. Answer type: the row's own ``answer_type`` (the dataset's label) whenever it is CLOSED or
   OPEN; rules only where there is none (LLaVA-Med, PathVQA, GMAI-MMBench, unlabelled user rows).
2. Category: the dataset's own question label (Slake ``content_type``, VQA-RAD ``question_type``,
   GMAI-MMBench clinical VQA task) through the mapping tables below; question rules where a
   dataset has no label, a label means "other", or a label is not in the table.

A label's closed side may be :data:`BY_ANSWER_FORM`: the label names a topic (organ,
abnormality...) that has no closed category of its own, so a yes/no question goes to
``closed_yes_no`` and any other closed question (``heart or lung?``) to ``closed_general``.
Every row gets a category; the last rule of each answer type is a default. docs/taxonomy.md
shows the same tables; a test keeps the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from medvl.data.format import answer_of, question_of
from medvl.data.taxonomy import CLOSED, OPEN, normalize_answer_type

#: Closed side of a label: yes/no questions -> closed_yes_no, other closed questions -> closed_general.
BY_ANSWER_FORM = "by_answer_form"
#: The label carries no topic (VQA-RAD's OTHER): use the question rules.
BY_QUESTION_RULES = "by_question_rules"

#: Slake ``content_type`` -> (closed category, open category).
SLAKE_CONTENT_TYPE: dict[str, tuple[str, str]] = {
    "Organ": (BY_ANSWER_FORM, "open_anatomy"),
    "Position": ("closed_location", "open_location"),
    "Abnormality": (BY_ANSWER_FORM, "open_abnormality"),
    # Knowledge-graph questions ask about treatment, symptoms, harm and function.
    "KG": (BY_ANSWER_FORM, "open_impact"),
    # There is no open modality category: naming the modality or plane describes the image.
    "Modality": ("closed_modality", "open_description"),
    "Plane": ("closed_modality", "open_description"),
    # Slake's size questions compare organs ("What is the largest organ in the picture?").
    "Size": (BY_ANSWER_FORM, "open_comparison"),
    "Quantity": (BY_ANSWER_FORM, "open_counting"),
    "Color": (BY_ANSWER_FORM, "open_appearance"),
    "Shape": (BY_ANSWER_FORM, "open_appearance"),
}

#: VQA-RAD ``question_type`` -> (closed category, open category). A combination such as
#: ``"ABN, POS"`` uses its first listed type that is in the table.
VQA_RAD_QUESTION_TYPE: dict[str, tuple[str, str]] = {
    "PRES": (BY_ANSWER_FORM, "open_abnormality"),  # presence of a finding
    "ABN": (BY_ANSWER_FORM, "open_abnormality"),
    "POS": ("closed_location", "open_location"),
    "ORGAN": (BY_ANSWER_FORM, "open_anatomy"),
    "MODALITY": ("closed_modality", "open_description"),
    "PLANE": ("closed_modality", "open_description"),
    # VQA-RAD's size questions measure one structure ("Is the heart enlarged?", "How big...").
    "SIZE": (BY_ANSWER_FORM, "open_appearance"),
    "ATTRIB": (BY_ANSWER_FORM, "open_appearance"),
    "COLOR": (BY_ANSWER_FORM, "open_appearance"),
    "COUNT": (BY_ANSWER_FORM, "open_counting"),
    "OTHER": (BY_ANSWER_FORM, BY_QUESTION_RULES),
}

#: GMAI-MMBench clinical VQA task -> (closed category, open category). Every row is a
#: multiple-choice question, hence closed, and none of the 18 tasks asks for a modality or a
#: location as its answer, so all map to closed_general; per-task scores come from meta["task"].
GMAI_TASK: dict[str, tuple[str, str]] = {
    task: ("closed_general", BY_QUESTION_RULES)
    for task in (
        "Attribute Recognition",
        "Blood Vessels Recognition",
        "Bone",
        "Cell Recognition",
        "Counting",
        "Disease Diagnosis",
        "Image Quality Grading",
        "Microorganism Recognition",
        # VLMEvalKit's GMAI-MMBench_VAL names these two without "Recognition" (its per-task results
        # columns); the paper's longer names are kept for copies that use them.
        "Muscle",
        "Muscle Recognition",
        "Nervous Tissue",
        "Nervous Tissue Recognition",
        "Organ Recognition - Abdomen",
        "Organ Recognition - Head and Neck",
        "Organ Recognition - Pelvic",
        "Organ Recognition - Thorax",
        "Severity Grading",
        "Surgeon Action Recognition",
        "Surgical Instrument Recognition",
        "Surgical Workflow Recognition",
    )
}

#: source -> (meta key holding the label, table, whether "A, B" combinations occur).
LABEL_TABLES: dict[str, tuple[str, dict[str, tuple[str, str]], bool]] = {
    "slake": ("content_type", SLAKE_CONTENT_TYPE, False),
    "vqa_rad": ("question_type", VQA_RAD_QUESTION_TYPE, True),
    "gmai_mmbench": ("task", GMAI_TASK, False),
}

_AUX = (r"^(is|are|was|were|am|does|do|did|can|could|would|will|should|shall|has|have|had|"
        r"may|might|must)\b")
_YES_NO_EN = {"yes", "no"}
_YES_NO_ZH = {"是", "否", "是的", "不是"}
_CHOICE = re.compile(_AUX + r".*\bor\b|^(which|what)\b.*,[^,]+\bor\b[^,]+$", re.I)
#: Sources whose closed questions are exactly those answered yes/no (PathVQA's own split into its "yes/no" and
#: "open" halves): the question-form rules do not make their other rows CLOSED.
CLOSED_ONLY_WHEN_YES_NO = frozenset({"pathvqa"})

# Chinese polar questions: 是否 ("whether") or an A-not-A verb (有没有, 是不是, 能不能, 可不可以, 存不存在).
_POLAR_ZH = re.compile(r"是否|([\u4e00-\u9fff]{1,2})[不没]\1")
# 还是 asks "A or B": a choice, not yes/no ("脑肿瘤是白色的还是灰色的?").
_CHOICE_ZH = "还是"
# Chinese has no yes/no words: a reply affirms or denies the question's own verb (包含吗? 不包含).
# 正常/不正常 is left out: it also answers choices and descriptions, and 是否正常 questions are polar anyway.
_VERB_REPLY_ZH = {"有", "没有", "包含", "不包含", "存在", "不存在", "可以", "不可以", "能", "不能", "会", "不会"}
# 几乎 ("almost") is not the question word 几.
_QUESTION_WORD_ZH = re.compile(r"什么|哪|多少|几(?!乎)|谁|怎|如何|为何|为什么|多大|多长|多久|何时|何处")


def is_yes_no_answer(answer: str) -> bool:
    """``yes`` / ``no`` (any case, trailing punctuation ignored), or Chinese 是/否."""
    a = answer.strip().lower().rstrip(".!。")
    return a in _YES_NO_EN or a in _YES_NO_ZH


def is_polar_question(question: str) -> bool:
    """A question answered by yes or no: an auxiliary verb first and no ``or`` alternative
    (English); the particle 吗 at the end, 是否, or an A-not-A form (有没有, 是不是...) without a
    还是 alternative (Chinese)."""
    q = question.strip()
    if _CHOICE_ZH not in q and (q.rstrip(" ?？").endswith("吗") or _POLAR_ZH.search(q)):
        return True
    return bool(re.match(_AUX, q, re.I)) and not re.search(r"\bor\b", q, re.I)


def is_verb_reply_zh(question: str, answer: str) -> bool:
    """A Chinese yes/no reply (有/没有, 包含/不包含, 存在/不存在, 可以/不可以, 能/不能, 会/不会) to a
    question with no 还是 alternative and no question word (什么, 哪, 多少, 几, 谁, 怎, 如何, 多大...):
    a question polar by intonation alone ("图片中包含器官可以被用于排泄机体废物质?" 不包含)."""
    return (answer.strip().rstrip("。!！") in _VERB_REPLY_ZH and _CHOICE_ZH not in question
            and not _QUESTION_WORD_ZH.search(question))


def is_yes_no(question: str, answer: str) -> bool:
    return is_yes_no_answer(answer) or is_polar_question(question) or is_verb_reply_zh(question, answer)


def _starts_yes_no(answer: str) -> bool:
    return bool(re.match(r"(yes|no)\b", answer.strip(), re.I))


Rule = tuple[str, Callable[[str, str], bool], str]


def _pattern(regex: str) -> Callable[[str, str], bool]:
    compiled = re.compile(regex, re.I)
    return lambda question, answer: bool(compiled.search(question))


#: Closed questions without a usable label: first match wins; (rule, test, category).
CLOSED_RULES: list[Rule] = [
    ("modality", _pattern(
        r"\bmodalit|\b(ct|mri?|x-?ray|ultrasound|pet)\s+or\s+(an? )?(ct|mri?|x-?ray|ultrasound|pet)\b"
        r"|\b(taken|acquired|obtained) (with|via|by|using)\b"
        r"|^(is|was) (this|it) (image )?(an? )?(ct|mri?|x-?ray|ultrasound|radiograph|pet)\b"
        r"|\bplane\b|\b(ap or pa|pa or ap)\b|\bt1 or t2\b|\bt2 or t1\b"), "closed_modality"),
    ("location", _pattern(
        r"\bwhere\b|\b(which|what) side\b|\bleft or right\b|\bright or left\b|\blocated\b"
        r"|\blocation\b"), "closed_location"),
    ("yes_no", is_yes_no, "closed_yes_no"),
    ("default_closed", lambda q, a: True, "closed_general"),
]

#: Open questions without a usable label: first match wins; (rule, test, category).
OPEN_RULES: list[Rule] = [
    ("counting", _pattern(r"\bhow many\b|\bnumber of\b|\bcount\b"), "open_counting"),
    ("modality_or_plane", _pattern(
        r"\bmodalit|\b(type|kind|sort) of (imaging|scan|image|mri|ct|study|film)\b"
        r"|\bimaging (technique|method|type)\b|\b(which|what) plane\b|\b(scanning|imaging) plane\b"
        r"|\bplane of\b|\bhow was (this|the) (image|film|scan|x-?ray) (taken|acquired|obtained)\b"),
        "open_description"),
    ("location", _pattern(
        r"\bwhere\b|\b(which|what) (side|part|lobe|quadrant|region|half|segment|level)\b|\blocated\b"
        r"|\blocation\b|\blocali[sz]ed\b"), "open_location"),
    ("comparison", _pattern(
        r"\bcompar\w*|\bdifferen(ce|t) (between|from)\b"
        r"|\b(bigger|larger|smaller|biggest|largest|smallest|greatest|longest|shortest|widest"
        r"|thickest)\b|\b\w+er than\b|\b(more|less) \w+ than\b"), "open_comparison"),
    ("abnormality", _pattern(
        r"\babnormal\w*|\bdiseas\w*|\bdiagnos\w*|\bpatholog\w*|\bwhat is wrong\b|\bfindings?\b"
        r"|\bcondition\b|\bsign\b|\bwhat (kind|type) of (lesion|mass|tumou?r|fracture)\b"),
        "open_abnormality"),
    ("impact", _pattern(
        r"\bcaus\w*|\beffects?\b|\bimpact\w*|\btreat\w*|\btherap\w*|\bprevent\w*|\bfunctions?\b"
        r"|\bsymptoms?\b|\bdamage\b|\bharm\w*|\brisks?\b|\bprognos\w*|\bcomplications?\b"
        r"|\blead to\b|\bresult in\b|\bwhy\b|\baffect\w*|\bindicat\w*|\bmanage\w*"),
        "open_impact"),
    ("anatomy", _pattern(
        r"\borgans?\b|\bstructures?\b|\banatom\w*|\bbody part\b"
        r"|\bvessels?\b|\bbones?\b|\btissues?\b|\bsystem\b"), "open_anatomy"),
    ("appearance", _pattern(
        r"\bcolou?rs?\b|\bshapes?\b|\blooks? like\b|\bappear\w*|\bdens(e|ity)\b|\bintensity\b"
        r"|\btexture\b|\bsize\b|\bhow (big|large|small|long|wide|thick)\b|\bbright\w*|\bdark\w*"
        r"|\benhanc\w*|\bsignal\b|\bmargins?\b|\bborders?\b|\bcontour\b"), "open_appearance"),
    ("description", _pattern(
        r"\bshows?\b|\bshown\b|\bseen\b|\bsee\b|\bpresent\b|\bdepict\w*|\bdescri\w*|\bvisible\b"
        r"|\bdemonstrat\w*|\bevince\w*|\billustrat\w*"), "open_description"),
    ("default_open", lambda q, a: True, "open_description"),
]


def categorize(row: dict[str, Any]) -> tuple[str, str, str]:
    """Return ``(answer_type, category, rule_used)`` for a unified row.

    ``rule_used`` reads ``"answer_type=<how>; category=<how>"``, e.g.
    ``"answer_type=dataset; category=slake.content_type=Organ/yes_no"`` or
    ``"answer_type=yes_no_answer; category=question:location"``; docs/taxonomy.md lists them all.
    Multi-turn rows are categorized by their first question.
    """
    question, answer = _texts(row)
    answer_type, type_rule = answer_type_rule(row, question, answer)
    category, category_rule = category_rule_of(row, answer_type, question, answer)
    return answer_type, category, f"answer_type={type_rule}; category={category_rule}"


def categorize_answer_type(row: dict[str, Any]) -> tuple[str, str]:
    """``(answer_type, rule_used)`` alone, as :func:`categorize` decides it: for rows under a dataset's own
    taxonomy (``data.categories``), whose category names the rules here cannot know."""
    answer_type, type_rule = answer_type_rule(row, *_texts(row))
    return answer_type, f"answer_type={type_rule}"


def _texts(row: dict[str, Any]) -> tuple[str, str]:
    turns = row.get("conversations") or []
    return question_of(row), answer_of(row) if len(turns) > 1 else ""


def answer_type_rule(row: dict[str, Any], question: str, answer: str) -> tuple[str, str]:
    """(CLOSED/OPEN, rule) from the dataset's answer_type, else from rules."""
    given = row.get("answer_type")
    if normalize_answer_type(given) is not None:
        return normalize_answer_type(given), "dataset"
    # An unusable dataset value is not silently replaced: the rule says so.
    note = "" if given is None else f"(dataset value {given!r} unusable) "
    if isinstance((row.get("meta") or {}).get("options"), dict):
        return CLOSED, note + "multiple_choice"
    if is_yes_no_answer(answer):
        return CLOSED, note + "yes_no_answer"
    if row.get("source") in CLOSED_ONLY_WHEN_YES_NO:
        return OPEN, note + "not_yes_no_answer"
    if is_polar_question(question) and _starts_yes_no(answer):
        return CLOSED, note + "polar_question_yes_no_reply"
    if _CHOICE.search(question.strip()):
        return CLOSED, note + "choice_question"
    return OPEN, note + "default_open"


def category_rule_of(row: dict[str, Any], answer_type: str, question: str,
                     answer: str) -> tuple[str, str]:
    """(category id, rule): the dataset label's table entry, else the first matching question rule."""
    note = ""
    source = row.get("source", "")
    if source in LABEL_TABLES:
        key, table, combos = LABEL_TABLES[source]
        label = (row.get("meta") or {}).get(key)
        entry, matched = _lookup(table, label, combos)
        where = f"{source}.{key}={matched if entry else label}"
        if entry is not None:
            target = entry[0] if answer_type == CLOSED else entry[1]
            if target == BY_ANSWER_FORM:
                yes_no = is_yes_no(question, answer)
                return ("closed_yes_no" if yes_no else "closed_general",
                        f"{where}/{'yes_no' if yes_no else 'general'}")
            if target != BY_QUESTION_RULES:
                return target, where
            note = f" ({where} has no topic)"
        elif label is not None:
            note = f" ({where} not in table)"
    rules = CLOSED_RULES if answer_type == CLOSED else OPEN_RULES
    for name, test, category in rules:
        if test(question, answer):
            return category, f"question:{name}{note}"
    raise AssertionError("the last rule always matches")


def _lookup(table: dict[str, tuple[str, str]], label: Any,
            combos: bool) -> tuple[tuple[str, str] | None, str | None]:
    """The table entry for a label (case-insensitive; first known part of an "A, B" combination)."""
    if not isinstance(label, str):
        return None, None
    folded = {k.lower(): k for k in table}
    parts = label.split(",") if combos else [label]
    for part in parts:
        key = folded.get(part.strip().lower())
        if key is not None:
            return table[key], key
    return None, None
