"""The project's 12-category question taxonomy.

Four closed-set categories and eight open-ended ones. Closed and open "location" are distinct
categories, so a category is always named together with its answer type: ``closed_location``
versus ``open_location``. ``CATEGORIES`` is the single source of truth; converters, the synthetic
generator and evaluation tables all use these ids.
"""

from __future__ import annotations

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
