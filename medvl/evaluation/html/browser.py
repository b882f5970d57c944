"""The predictions browser's rows: one per id, the runs' predictions side by side, with a thumbnail of the
image, right/wrong per run, and the row's metrics.

Sizes are capped so that a report stays a file one can mail: :data:`MAX_ROWS` rows and :data:`MAX_THUMBNAILS`
thumbnails (the first rows in the browser's order, wrong answers first); the page says so when it caps.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from medvl.evaluation.aggregate import UNCATEGORIZED
from medvl.tables import format_number, is_number

MAX_ROWS = 2000
MAX_THUMBNAILS = 300
THUMBNAIL_PX = 160
#: The per-row correctness the right/wrong filter uses, in order of preference.
CORRECTNESS = ("choice_accuracy", "closed_accuracy", "exact_match")
CORRECTNESS_NOTE = ("Right/wrong: choice_accuracy on multiple-choice rows, else closed_accuracy on closed rows, "
                    "else exact_match (1 = right).")


@dataclass
class Answer:
    """One run's answer to a row (None: the run has no prediction for it)."""

    prediction: str
    correct: bool | None
    metrics: list[tuple[str, str]]


@dataclass
class Row:
    id: str
    category: str
    question: str
    reference: str
    answers: list[Answer | None]
    image: str | None = None
    thumbnail: str | None = None  # a data: URI

    @property
    def n_wrong(self) -> int:
        return sum(1 for a in self.answers if a is not None and a.correct is False)

    @property
    def n_right(self) -> int:
        return sum(1 for a in self.answers if a is not None and a.correct)


@dataclass
class Browser:
    runs: list[str]
    rows: list[Row]
    categories: list[str]
    total: int
    notices: list[str] = field(default_factory=list)
    correctness: str = CORRECTNESS_NOTE


def correct(record: Mapping[str, Any]) -> bool | None:
    """Whether a scored row is right by the first of :data:`CORRECTNESS` it has; None: none of them."""
    scores = record.get("metrics") or {}
    for name in CORRECTNESS:
        if is_number(scores.get(name)):
            return scores[name] >= 0.5
    return None


def image_index(rows: Sequence[Mapping[str, Any]], root: str | Path | None) -> dict[str, Path]:
    """``{id: first image path}`` of dataset rows, whose ``image`` paths are relative to ``root``."""
    out = {}
    for row in rows:
        image = row.get("image")
        first = image[0] if isinstance(image, list) and image else image
        if isinstance(first, str) and "id" in row:
            out[str(row["id"])] = Path(root or ".") / first
    return out


@lru_cache(maxsize=4096)  # medvl.eval compare_base=true shows each image in three reports
def thumbnail(path: Path, size: int = THUMBNAIL_PX) -> str | None:
    """A JPEG data URI of the image scaled to fit ``size`` pixels; None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _answer(record: Mapping[str, Any] | None) -> Answer | None:
    if record is None:
        return None
    scores = [(name, format_number(value)) for name, value in (record.get("metrics") or {}).items()
              if value is None or is_number(value)]
    if is_number(record.get("perplexity")):
        scores.append(("perplexity", format_number(float(record["perplexity"]))))
    return Answer(str(record.get("prediction", "")), correct(record), scores)


def build_browser(runs: Mapping[str, Sequence[Mapping[str, Any]]], images: Mapping[str, Path] | None = None,
                  *, max_rows: int = MAX_ROWS, max_thumbnails: int = MAX_THUMBNAILS,
                  categories: Sequence[str] = ()) -> Browser:
    """Rows of every run's predictions.jsonl paired by id (first-seen order), wrong answers first.

    ``categories``: the category filter's order, the tables' (metrics.json ``by_category``: the taxonomy's, a
    dataset's own included); categories not in it follow as first seen.
    """
    by_run = [{str(r["id"]): r for r in records if "id" in r} for records in runs.values()]
    ids = list(dict.fromkeys(i for records in by_run for i in records))
    rows = []
    for row_id in ids:
        first = next(records[row_id] for records in by_run if row_id in records)
        rows.append(Row(row_id, str(first.get("category") or UNCATEGORIZED), str(first.get("question", "")),
                        str(first.get("reference", "")), [_answer(records.get(row_id)) for records in by_run]))
    rows.sort(key=lambda row: -row.n_wrong)  # stable: the file's order within each level
    total = len(rows)
    notices = []
    if total > max_rows:
        notices.append(f"Showing the first {max_rows} of {total} rows (wrong answers first); predictions.jsonl "
                       "holds them all.")
        rows = rows[:max_rows]
    if images is None:
        notices.append("No thumbnails: the image folder is not known here (medvl.eval's own report.html has them).")
    else:
        for position, row in enumerate(rows):
            path = images.get(row.id)
            row.image = str(path) if path is not None else None
            if path is not None and position < max_thumbnails:
                row.thumbnail = thumbnail(Path(path))
        if len(rows) > max_thumbnails:
            notices.append(f"Thumbnails for the first {max_thumbnails} of {len(rows)} rows shown (wrong answers "
                           "first); the others show the image's path.")
    shown = set(row.category for row in rows)
    order = [c for c in dict.fromkeys(categories) if c in shown] + list(dict.fromkeys(row.category for row in rows))
    return Browser(list(runs), rows, list(dict.fromkeys(order)), total, notices)
