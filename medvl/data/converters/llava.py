"""Users' own data in the LLaVA format: a JSON list or JSONL of ``{id, image, conversations}``.

``image`` may be a path, a list of paths, or absent for a text-only row; paths are relative to
the root (``image_dir`` adds a prefix). Ids are kept as given so predictions join back to the
user's rows. Optional ``answer_type``, ``category`` and ``meta`` are carried over; a given
category must be one the taxonomy declares (the built-in 12, or the data config's ``categories``) and
agree with a given answer type.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medvl.data.converters._common import Reject, Row, convert_records, llava_row, split_file
from medvl.data.taxonomy import ANSWER_TYPES, BUILTIN, label_problem, normalize_answer_type


def _files(split: str) -> dict[str, tuple[str, ...]]:
    return {split: (f"{split}.jsonl", f"{split}.json")}


def convert_llava(root: Path, split: str, *, file: str | None = None, image_dir: str = "",
                  categories: Mapping[str, str] | None = None) -> Iterator[Row | Reject]:
    path = split_file(root, split, _files(split), file, "llava")

    def row_of(_: int, loc: str, record: Any) -> Row | Reject:
        raw_id = record.get("id") if isinstance(record, dict) else None
        meta = record.get("meta") if isinstance(record, dict) else None
        row = llava_row(record, loc, source="llava", image_dir=image_dir,
                        row_id=None if raw_id is None else str(raw_id), image_required=False,
                        meta=dict(meta) if isinstance(meta, dict) else {})
        if isinstance(row, Reject):
            return row
        given = _given_labels(record, loc, categories)
        if isinstance(given, Reject):
            return given
        row["answer_type"], row["category"] = given
        return row

    yield from convert_records(path, row_of)


def _given_labels(record: dict, loc: str, categories: Mapping[str, str] | None = None,
                  ) -> tuple[str | None, str | None] | Reject:
    """A record's own (answer type, category), the answer type from the taxonomy where only the category is
    given; ``categories``: the data config's taxonomy (None: the built-in 12)."""
    answer_type, category = record.get("answer_type"), record.get("category")
    if answer_type is not None:
        answer_type = normalize_answer_type(answer_type)
        if answer_type is None:
            return Reject(loc, "bad_value", f"answer_type must be one of {ANSWER_TYPES}, got "
                          f"{record['answer_type']!r}", raw=record)
    if category is None:
        return answer_type, None
    problem = label_problem(categories, category, answer_type)
    if problem is not None:
        return Reject(loc, "bad_category", problem, raw=record)
    return (BUILTIN if categories is None else categories)[category], category
