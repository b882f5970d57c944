"""Answer normalization and tokenization shared by every metric.

All scorers see text through :func:`normalize_answer`, so case, punctuation, spacing and the
spelling of yes/no never change a score, and :func:`words` is the one tokenizer: English splits
on spaces, Chinese and Japanese (which have no spaces) count one word per character, as Slake's
Chinese answers are scored.

The yes/no spelling is folded the same way on both sides of a comparison, in either language: a
whole answer that is an alias ("是的", "Correct.") and an alias that opens a longer answer before a
clause break ("是，图中有肝脏", "Yeah, it is") both become ``yes``/``no``. Folding only whole
answers would turn the reference "是" into "yes" but leave the prediction "是，..." in characters,
and every text metric would score the pair 0 while its English twin scores above 0.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

YES = "yes"
NO = "no"
#: Languages rows are scored in (BERTScore's model, the ``by_lang`` table).
LANGUAGES = ("en", "zh")

# Whole-answer aliases only: inside a sentence "true lumen" or "right lung" must stay as written.
# 包含/不包含 ("contains"/"does not contain") are how Slake's Chinese rows answer yes/no questions.
YES_ALIASES = frozenset(
    {"yes", "y", "yeah", "yep", "true", "correct", "是", "是的", "对", "对的", "正确", "有", "包含"}
)
NO_ALIASES = frozenset({"no", "n", "nope", "false", "incorrect", "否", "不是", "不", "不对", "错误", "没有", "不包含"})

# Apostrophes are deleted rather than spaced so that "don't" and "dont" agree.
_APOSTROPHES = re.compile(r"['\u2018\u2019`]")
# A thousands separator goes, so "1,000" and "1000" agree; "1,2" (a list) keeps its comma.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Punctuation and symbols become spaces, except a period between digits: "2.5 cm" keeps its value.
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")
# Han ideographs (basic, extensions A-F, compatibility) and kana: scripts written without spaces.
_CJK_CLASS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_WORD = re.compile(rf"[{_CJK_CLASS}]|[^\s{_CJK_CLASS}]+")
_CJK = re.compile(f"[{_CJK_CLASS}]")
# The first word of an answer and the clause break after it (NFKC has already folded the full-width
# ，；：！？ to ASCII; the ideographic 。 and 、 stay as they are).
_LEADING = re.compile(r"^\s*(\w+)\s*[,.;:!?\u3001\u3002]")
# Single letters open too many other things ("N/A", "Y, Z") to be read as a decision there.
_LEADING_EXCLUDED = frozenset({"y", "n"})


def normalize_answer(text: object) -> str:
    """Canonical form of an answer for comparison.

    Lowercases (after Unicode NFKC, so full-width Chinese punctuation and digits fold to ASCII),
    drops thousands separators (``"1,000"`` -> ``"1000"``), turns punctuation and symbols into
    spaces (keeping decimal points), collapses whitespace, and
    maps a whole answer that is a yes/no alias (``"Y"``, ``"True."``, ``"是的"``, ``"否"``) to
    ``"yes"`` / ``"no"``. An integer is read as its digits; anything else that is not a string
    (``None``, a float NaN from pandas, a list) normalizes to ``""``, which every metric scores
    as a miss.

    >>> normalize_answer("  The Left  Lung. ")
    'the left lung'
    >>> normalize_answer("Correct!"), normalize_answer("否"), normalize_answer(None)
    ('yes', 'no', '')
    """
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)  # a count stored as a JSON number ("answer": 2) is still an answer
    if not isinstance(text, str):
        return ""
    return _normalize(text)


@lru_cache(maxsize=1 << 16)
def _normalize(text: str) -> str:
    # Metrics normalize the same prediction once per metric; the cache makes that free.
    text = unicodedata.normalize("NFKC", text).lower()
    text = _APOSTROPHES.sub("", text)
    text = _THOUSANDS.sub("", text)
    text = _fold_leading_alias(text)
    text = " ".join(_PUNCT.sub(" ", text).split())
    if text in YES_ALIASES:
        return YES
    if text in NO_ALIASES:
        return NO
    return text


def _fold_leading_alias(text: str) -> str:
    """``"是，图中有肝脏"`` -> ``"yes,图中有肝脏"``: an opening yes/no alias spelled as a whole answer's."""
    match = _LEADING.match(text)
    if match is None or match.group(1) in _LEADING_EXCLUDED:
        return text
    alias = match.group(1)
    canonical = YES if alias in YES_ALIASES else NO if alias in NO_ALIASES else None
    return text if canonical is None else text[: match.start(1)] + canonical + text[match.end(1) :]


def text_language(text: object) -> str:
    """``"zh"`` for a text with Chinese (or Japanese) characters in it, else ``"en"``.

    >>> text_language("左肺"), text_language("CT"), text_language(None)
    ('zh', 'en', 'en')
    """
    return "zh" if isinstance(text, str) and _CJK.search(text) else "en"


def words(text: object) -> list[str]:
    """Words of the normalized text; each Chinese/Japanese character is a word of its own.

    >>> words("Left lung, 左肺")
    ['left', 'lung', '左', '肺']
    """
    return _WORD.findall(normalize_answer(text))


def chars(text: object) -> list[str]:
    """Characters of the normalized text, spaces left out."""
    return [c for c in normalize_answer(text) if not c.isspace()]
