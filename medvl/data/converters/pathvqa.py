"""PathVQA as JSON (``train.json`` / ``val.json`` / ``test.json``), one record per question.

Records carry ``image`` or ``image_path`` (relative to the root, often with Windows separators,
``images\\test\\pathvqa_00000.jpg``), ``question`` and ``answer``. PathVQA has no answer type or
question type of its own: some copies add ``question_type``/``answer_type`` from a third party's
heuristics; they are kept in ``meta`` as ``heuristic_question_type``/``heuristic_answer_type``
and not used, so closed/open comes from medvl's yes/no rule (:mod:`medvl.data.categorize`).
Rows have no ids, so the id is the row's position in the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medvl.data.converters._common import (
    Reject,
    Row,
    convert_records,
    join_image,
    missing,
    split_file,
    text_fields,
)
from medvl.data.format import make_row

FILES = {
    "train": ("train.json",),
    "validation": ("val.json", "validation.json"),
    "test": ("test.json",),
}


def convert_pathvqa(root: Path, split: str, *, file: str | None = None,
                    image_dir: str = "") -> Iterator[Row | Reject]:
    path = split_file(root, split, FILES, file, "pathvqa")

    def row_of(n: int, loc: str, record: Any) -> Row | Reject:
        if not isinstance(record, dict):
            return Reject(loc, "malformed_row", f"expected an object, got {type(record).__name__}", raw=record)
        image = record.get("image") if record.get("image") is not None else record.get("image_path")
        absent = missing(record, ("question", "answer"))
        if image is None:
            absent.insert(0, "image/image_path")
        if absent:
            return Reject(loc, "missing_field", f"missing {', '.join(absent)}", raw=record)
        if not isinstance(image, str) or not image.strip():
            # The HF export holds image bytes here; that copy needs its images written out first.
            return Reject(loc, "bad_value", f"image is not a path: {str(image)[:80]!r}", raw=record)
        qa = text_fields(record, loc)
        if isinstance(qa, Reject):
            return qa
        meta = {"row": n}
        for key in ("question_type", "answer_type"):
            if key in record:
                meta[f"heuristic_{key}"] = record[key]
        return make_row(f"pathvqa-{split}-{n}", join_image(image_dir, image.strip()), *qa,
                        source="pathvqa", meta=meta)

    yield from convert_records(path, row_of)
