"""The project's 12-category question taxonomy.

Four closed-set categories and eight open-ended ones. Closed and open "location" are distinct
categories, so a category is always named together with its answer type: ``closed_location``
versus ``open_location``. ``CATEGORIES`` is the single source of truth; converters, the synthetic
generator and evaluation tables all use these ids.

A dataset may bring its own taxonomy instead (``data.categories``: name -> CLOSED/OPEN);
:func:`declared_taxonomy` reads it and :func:`label_problem` is the one test of a row's given
category against either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CLOSED = "CLOSED"
OPEN = "OPEN"
ANSWER_TYPES = (CLOSED, OPEN)

CLOSED_CATEGORIES = ("yes_no", "modality", "location", "general")
OPEN_CATEGORIES = (
    "description",
    "anatomy",
    "location",
    "abnormality",
    "counting",
    "comparison",
    "appearance",
    "impact",
)

#: Category id -> (answer type, short name). Ordered: closed first, then open.
CATEGORIES: dict[str, tuple[str, str]] = {
    **{f"closed_{name}": (CLOSED, name) for name in CLOSED_CATEGORIES},
    **{f"open_{name}": (OPEN, name) for name in OPEN_CATEGORIES},
}


def normalize_answer_type(value: object) -> str | None:
    """``CLOSED`` or ``OPEN`` for an answer-type label in any case or spacing (``" closed"``); None for anything else.

    The one reading of a dataset's or a row's ``answer_type``: converters, categorization, scoring and tables.
    """
    if isinstance(value, str) and value.strip().upper() in ANSWER_TYPES:
        return value.strip().upper()
    return None


def category_id(answer_type: str, name: str) -> str:
    """Return the category id for an answer type and a short category name.

    >>> category_id("CLOSED", "location")
    'closed_location'
    """
    given, answer_type = answer_type, normalize_answer_type(answer_type)
    if answer_type is None:
        raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {given!r}")
    names = CLOSED_CATEGORIES if answer_type == CLOSED else OPEN_CATEGORIES
    if name not in names:
        raise ValueError(f"{answer_type} category must be one of {names}, got {name!r}")
    return f"{answer_type.lower()}_{name}"


def answer_type_of(category: str) -> str:
    """Return CLOSED or OPEN for a category id."""
    try:
        return CATEGORIES[category][0]
    except KeyError:
        raise ValueError(f"unknown category {category!r}; valid: {', '.join(CATEGORIES)}") from None


#: The built-in taxonomy as category -> answer type, in table order: what a data config without ``categories`` gets.
BUILTIN: dict[str, str] = {category: answer_type for category, (answer_type, _) in CATEGORIES.items()}

#: Group names the tables already use beside the categories (by_category.csv lists overall, closed and open
#: under the categories; rows without a category are "uncategorized"), so no declared category may take them.
RESERVED = ("overall", "closed", "open", "uncategorized")


class TaxonomyError(ValueError):
    """``data.categories`` is unusable; the message is one line naming the entry."""


def declared_taxonomy(declared: Any) -> dict[str, str] | None:
    """A data config's ``categories`` read and checked: None (null or empty: the built-in 12) or, in the declared
    order, category -> ``CLOSED``/``OPEN``.

    Names are kept exactly as declared, since tables, charts and ``medvl.compare`` show them; a name may not
    be empty, carry surrounding spaces, a ``|`` (Markdown tables) or a line break, or be one of :data:`RESERVED`.

    Raises:
        TaxonomyError: not a mapping, a bad name or an answer type other than CLOSED/OPEN.
    """
    if declared is None:
        return None
    if not isinstance(declared, Mapping):
        raise TaxonomyError(f"data.categories must map category names to CLOSED or OPEN, got {declared!r}")
    if not declared:
        return None
    taxonomy: dict[str, str] = {}
    for name, answer_type in declared.items():
        if (not isinstance(name, str) or not name.strip() or name != name.strip()
                or any(c in name for c in "|\n\r")):
            raise TaxonomyError(f"data.categories: {name!r} is not a usable category name (text without "
                                "surrounding spaces, '|' or line breaks)")
        if name.lower() in RESERVED:
            raise TaxonomyError(f"data.categories: {name!r} is reserved for the tables' own groups "
                                f"({', '.join(RESERVED)})")
        normalized = normalize_answer_type(getattr(answer_type, "value", answer_type))
        if normalized is None:
            raise TaxonomyError(f"data.categories.{name} must be CLOSED or OPEN, got {answer_type!r}")
        taxonomy[name] = normalized
    return taxonomy


def label_problem(taxonomy: Mapping[str, str] | None, category: Any, answer_type: Any) -> str | None:
    """Why a row's given category does not fit ``taxonomy`` (None: the built-in 12), or None when it fits.

    A category fits when the taxonomy declares it and, where the row gives an answer type, declares it with
    that answer type: the one rule for converters' given labels and the row checks (reason ``bad_category``).
    """
    known = BUILTIN if taxonomy is None else taxonomy
    if not isinstance(category, str) or category not in known:
        where = "a taxonomy id" if taxonomy is None else "declared in data.categories"
        return f"category {category!r} is not {where} ({', '.join(known)})"
    given = normalize_answer_type(answer_type)
    if answer_type is not None and given != known[category]:
        return f"category {category} is {known[category]}, but the row's answer_type is {answer_type!r}"
    return None
