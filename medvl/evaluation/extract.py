"""Answer extraction: pull the decision out of a free-form generation before scoring it.

Kept apart from the metrics so that a report can show both the strict score (the generation
compared as written) and the extracted one (lm-eval's ``strict-match`` / ``flexible-extract``).
"""

from __future__ import annotations

import re
import unicodedata

from medvl.evaluation.normalize import NO, YES, normalize_answer, words

# Chinese answers have no spaces to split on. Most open with the decision, read by prefix;
# longest first so that 不是 is "no" before 是 could make it "yes". A bare 不 prefix is left out:
# 不正常 ("abnormal") is a finding, not a "no".
_ZH_PREFIXES = sorted(
    [
        ("不包含", NO),
        ("不是", NO),
        ("没有", NO),
        ("不对", NO),
        ("否", NO),
        ("包含", YES),
        ("是", YES),
        ("对", YES),
        ("有", YES),
    ],
    key=lambda item: -len(item[0]),
)
# Inside a sentence ("图片中不包含脾脏") only phrases that cannot be part of another word count:
# 是 and 有 occur in countless words (这是 "this is", 有些 "some").
_ZH_ANYWHERE = (("不包含", NO), ("包含", YES), ("没有", NO), ("不是", NO))


# "Yes and no", "yes or no", "Yes/No" answer neither way (LLaVA-Med's test credits them both ways).
# Only where the pair ends a clause: in "Yes and no mass is seen" the "no" belongs to the mass.
_HEDGE = re.compile(r"(?i)\b(?:yes\s*(?:/|\band\b|\bor\b)\s*no|no\s*(?:/|\band\b|\bor\b)\s*yes)\b\s*(?:$|[.,;:!?])")


def extract_yes_no(prediction: object) -> str | None:
    """Return ``"yes"``, ``"no"`` or ``None`` for a generation answering a closed question.

    Mirrors how LLaVA-Med scores closed questions (``llava/eval/run_eval.py``: a prediction
    counts when it contains "yes" or "no"), with two fixes: words are matched whole, so
    "normal" is not a "no" and "eyes" not a "yes", and when both occur the first one wins
    ("No, there is no sign of ..." is "no", "Yes, no mass is seen" is "yes"). Chinese answers are
    read by their opening word (是/否/不是/包含/...), else by the first unambiguous phrase in them.
    A hedge ("Yes and no.", "yes or no", "Yes/No") is ``None``.

    >>> extract_yes_no("Yes, the liver is enlarged."), extract_yes_no("There is no effusion.")
    ('yes', 'no')
    >>> extract_yes_no("The image is normal.") is None
    True
    """
    text = normalize_answer(prediction)
    if text in (YES, NO):
        return text
    if isinstance(prediction, str) and _HEDGE.search(unicodedata.normalize("NFKC", prediction)):
        return None
    for prefix, answer in _ZH_PREFIXES:
        if text.startswith(prefix):
            return answer
    for word in words(text):
        if word in (YES, NO):
            return word
    found = [(text.find(phrase), -len(phrase), answer) for phrase, answer in _ZH_ANYWHERE if phrase in text]
    return min(found)[2] if found else None


# Letters are upper-case only (except a bare letter, or one ending the text) so that the article in
# "the answer is a mass" is never read as option A.
_BARE_LETTER = re.compile(r"^\s*[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:)]?\s*$")
# The answer, given first: "B. polyp", "(B) polyp", "C) ...", or a letter alone on the first line.
_LEADING_LETTER = re.compile(r"^\s*[(\[]?([A-Z])(?:[.:)\]]|\s*[)\]]|[ \t]*\n)")
# A statement of the answer: "the answer is B", "Answer: (B)", "the answer should be option B", "Option: B", "the
# correct option is B". "Option A" or "choice C" alone names an option without choosing it ("Option A is unlikely",
# "choice C is ruled out").
_STATEMENT = (r"(?i:\banswer\s*(?:(?:is|should\s+be|would\s+be|must\s+be)\b)?\s*:?\s*(?:(?:option|choice)\s*:?\s*)?"
              r"|\b(?:option|choice)\s*(?:is\b\s*:?|:)\s*)")
_ANSWER_IS = re.compile(_STATEMENT + r"[(\[]?\s*([A-Z])\b(?![-'])")
# ... a lower-case letter that ends the text ("answer: d") cannot be an article; nor can "Option A" as the whole text.
_ANSWER_IS_END = re.compile(
    r"(?:" + _STATEMENT + r"|^\s*(?i:option|choice)\s*)[(\[]?\s*([A-Za-z])\s*[)\]]?\s*\.?\s*$"
)
# An option chosen in words: "I choose option B", "I'd go with C", "Therefore, choice B", "Option B is correct".
_CHOSEN = re.compile(
    r"(?i:\b(?:choose|chose|pick|picked|select|selected|go\s+with|going\s+with|opt\s+for)\s+(?:(?:the\s+)?"
    r"(?:option|choice)\s*:?\s*)?|\b(?:so|therefore|thus|hence)\b,?\s*(?:the\s+)?(?:option|choice)\s*:?\s*)"
    r"[(\[]?\s*([A-Z])\b(?![-'])"
    r"|(?i:\b(?:option|choice)\s*)[(\[]?([A-Z])[)\]]?\s*(?i:is\s+(?:the\s+)?(?:correct|right|best|most\s+likely)\b)"
)
_PAREN_LETTER = re.compile(r"[(\[]([A-Z])[)\]]")
# A second letter right after the first ("B or C", "A and B", "A/B", "A, B"): two answers, not one.
_ALTERNATIVE = re.compile(r"\s*[)\].]?\s*(?:,|/|&|\bor\b|\band\b)\s*[(\[]?([A-Z])\b(?![-'])")


def extract_choice(prediction: object, options: dict[str, str | None]) -> str | None:
    """Return the option letter a generation picks, or ``None`` when it picks none or several.

    Understands ``"B"``, ``"(B)"``, ``"Answer: B"``, ``"The answer is B."``, ``"B. polyp"``,
    ``"(B) polyp"`` and, failing a letter, the text of exactly one option (``"polyp"``). Only
    letters that are keys of ``options`` with a non-empty text count; two of them offered as the
    answer (``"B or C"``, ``"(A) polyp (B) mass"``) are no answer. The last statement of the answer
    (``"A. Not seen. The answer is B."``) wins; then a letter that opens the generation, whatever the
    explanation after it names (``"B. Polyp. Option A is unlikely"``); then the last option chosen in
    words (``"I'd go with option C"``, ``"Option B is correct"``). An option named without being chosen
    (``"Option A is unlikely"``, ``"choice C is ruled out"``) is none.

    >>> opts = {"A": "barrett's esophagus", "B": "polyp", "C": "high-grade dysplasia"}
    >>> extract_choice("Answer: B", opts), extract_choice("(C) high-grade dysplasia", opts)
    ('B', 'C')
    >>> extract_choice("It looks like a polyp.", opts), extract_choice("D", opts)
    ('B', None)
    >>> extract_choice("B. Polyp; option A is unlikely.", opts), extract_choice("Option A is unlikely.", opts)
    ('B', None)
    """
    if not isinstance(prediction, str):
        return None
    prediction = unicodedata.normalize("NFKC", prediction)  # full-width "（B）" reads as "(B)"
    valid = {letter.upper() for letter, text in options.items() if isinstance(text, str) and text.strip()}
    if not valid:
        return None

    bare = _BARE_LETTER.match(prediction)
    if bare:
        letter = bare.group(1).upper()
        return letter if letter in valid else None
    bracketed = {letter for letter in _PAREN_LETTER.findall(prediction) if letter in valid}
    if len(bracketed) > 1:  # "(B) or (C)", or the options read back: "(A) polyp (B) mass"
        return None
    # The last statement of the answer (a reasoning ends with it), then a letter that opens the generation, then
    # the last option chosen in words.
    statements = sorted((m for pattern in (_ANSWER_IS, _ANSWER_IS_END) for m in pattern.finditer(prediction)),
                        key=lambda m: m.start(), reverse=True)
    chosen = sorted(_CHOSEN.finditer(prediction), key=lambda m: m.start(), reverse=True)
    for match in [*statements, _LEADING_LETTER.match(prediction), *chosen]:
        letter = match and next(group for group in match.groups() if group)
        if letter and letter.upper() in valid:
            other = _ALTERNATIVE.match(prediction, match.end())
            if other and other.group(1) in valid and other.group(1) != letter.upper():
                return None  # "The answer is B or C", "Answer: A and B"
            return letter.upper()
    if bracketed:
        return bracketed.pop()
    return _choice_by_text(prediction, {k.upper(): v for k, v in options.items() if k.upper() in valid})


def _choice_by_text(prediction: str, options: dict[str, str]) -> str | None:
    """The one option whose text appears, as whole words, in the prediction."""
    padded = f" {normalize_answer(prediction)} "
    found = {letter: normalize_answer(text) for letter, text in options.items()}
    found = {letter: text for letter, text in found.items() if text and f" {text} " in padded}
    # "liver cancer" also contains the option "liver": keep only the longest of nested matches.
    kept = [
        letter
        for letter, text in found.items()
        if not any(text != other and f" {text} " in f" {other} " for other in found.values())
    ]
    return kept[0] if len(kept) == 1 else None
