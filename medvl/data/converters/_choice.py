"""The multiple-choice row every benchmark converter builds: the options listed in the prompt, the option
letter as the reference answer, the options and the answer's text in ``meta``.

The scoring path reads ``meta["options"]`` to extract the chosen letter (``extract_choice``) and score
``choice_accuracy``; categorize.py makes any row with options CLOSED. GMAI-MMBench builds the same row in
its own module; the PMC-VQA, OmniMedVQA, MMMU and MedXpertQA converters build it here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from medvl.data.converters._common import Reject, Row, as_text
from medvl.data.converters.gmai_mmbench import format_multiple_choice
from medvl.data.format import make_row

# pandas (which the field's kits read CSV/TSV files with) turns these into NaN, i.e. "no option".
BLANK = {"", "nan", "NaN", "None"}


def letter_options(texts: list[Any]) -> dict[str, Any]:
    """``{"A": texts[0], "B": texts[1], ...}``: options given as a list, lettered in order (MMMU)."""
    return {chr(ord("A") + i): text for i, text in enumerate(texts)}


def answer_letter(value: Any, options: Mapping[str, str]) -> str | None:
    """The option letter an answer field names: the letter itself (``"B"``, ``" b "``, ``"B:"``), or the
    text of exactly one option (OmniMedVQA's ``gt_answer``, PMC-VQA v1's ``Answer``); None otherwise."""
    text = as_text(value)
    if not text:
        return None
    bare = re.fullmatch(r"\(?([A-Za-z])\)?[:.]?", text)
    if bare and bare.group(1).upper() in options:
        return bare.group(1).upper()
    for fold in (str.strip, lambda s: s.strip().casefold()):
        found = [letter for letter, option in options.items() if fold(option) == fold(text)]
        if len(found) == 1:
            return found[0]
    return None


def choice_row(loc: str, raw: Any, *, row_id: str, source: str, image: str | list[str], question: Any,
               options: Mapping[str, Any], answer: Any, meta: dict[str, Any]) -> Row | Reject:
    """The unified multiple-choice row, or the Reject saying why the record cannot be one.

    ``options`` maps letters to option texts; blank texts are no option (a question with fewer than four).
    ``answer`` is the letter or the text of the right option.
    """
    text = as_text(question)
    if text is None:
        return Reject(loc, "bad_value", f"question is not text: {question!r}", raw=raw)
    if not text:
        return Reject(loc, "empty_question", "question is empty", raw=raw)
    kept: dict[str, str] = {}
    for letter, option in options.items():
        if option is None or (isinstance(option, str) and option.strip() in BLANK):
            continue
        if not isinstance(option, (str, int, float)) or isinstance(option, bool):
            return Reject(loc, "bad_value", f"option {letter} is not text: {option!r}", raw=raw)
        kept[letter.upper()] = str(option).strip()
    if len(kept) < 2:
        return Reject(loc, "bad_options", f"{len(kept)} option(s); a multiple-choice question needs two or more",
                      raw=raw)
    if as_text(answer) in (None, "", *BLANK):
        return Reject(loc, "empty_answer", "answer is empty", raw=raw)
    letter = answer_letter(answer, kept)
    if letter is None:
        return Reject(loc, "bad_answer_option", f"answer {answer!r} is not one of {list(kept)} (by letter or "
                      "text)", raw=raw)
    meta = {**meta, "options": kept, "answer_text": kept[letter]}
    return make_row(row_id, image, format_multiple_choice(text, kept), letter, source=source, meta=meta)
