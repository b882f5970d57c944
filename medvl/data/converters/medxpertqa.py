"""MedXpertQA MM as published: ``MM/test.jsonl`` (and ``MM/dev.jsonl``) beside ``images/`` from images.zip.

Checked against: the dataset card (TsinghuaC3I/MedXpertQA README.md on the Hub: configs MM/dev.jsonl and
MM/test.jsonl; fields id, question "with formatted answer choices", options, label "single letter", images
"list of image filenames" in images.zip, medical_task, body_system, question_type), MedEvalKit's reader
(alibaba-damo-academy/MedEvalKit utils/MedXpertQA/MedXpertQA.py: ``options.items()``, images joined to
``<root>/images``, scores by question_type and medical_task) and the authors' evaluation input
(TsinghuaC3I/MedXpertQA eval/data/medxpertqa/input/medxpertqa_mm_input.jsonl, all 2,000 rows read: options
as ``[{"letter", "content"}]``, label as ``["A"]``, images as ``[{"image_path"}]``, five options each, every
question ending in one ``\\nAnswer Choices: (A) ... (E) ...``). Both shapes are read.

The question's own ``Answer Choices:`` tail is cut off and the options listed again in medvl's
multiple-choice form, so they appear once. Every MM row has one or more images (up to six in the test
set); they go in front of the question in their listed order, since the question refers to them as
"Figure A", "Figure B" rather than by placeholder. Splits: ``test`` (2,000 rows) and ``validation``
(the 5-row dev set). ``meta`` keeps id, medical_task, body_system and question_type.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medvl.data.converters._choice import choice_row
from medvl.data.converters._common import Reject, Row, check_record, convert_records, join_image, split_file

FILES = {
    "validation": ("MM/dev.jsonl", "dev.jsonl"),
    "test": ("MM/test.jsonl", "test.jsonl"),
}
LABELS = ("medical_task", "body_system", "question_type")
_INLINE_CHOICES = re.compile(r"\s*Answer Choices:\s*\(A\).*\Z", re.DOTALL)


def convert_medxpertqa(root: Path, split: str, *, file: str | None = None,
                       image_dir: str = "images") -> Iterator[Row | Reject]:
    path = split_file(root, split, FILES, file, "medxpertqa")
    yield from convert_records(path, lambda n, loc, record: _row(loc, record, split, image_dir))


def _row(loc: str, record: Any, split: str, image_dir: str) -> Row | Reject:
    bad = check_record(loc, record, ("id", "question", "options", "label", "images"))
    if bad is not None:
        return bad
    options = _options(record["options"])
    images = _images(record["images"])
    if options is None or images is None:
        field = "options" if options is None else "images"
        return Reject(loc, "bad_value", f"{field} has an unknown shape: {record[field]!r}", raw=record)
    if not images:
        return Reject(loc, "missing_field", "images is empty; every MedXpertQA MM question has an image",
                      raw=record)
    label = record["label"]
    if isinstance(label, list):
        label = label[0] if len(label) == 1 else ""
    question = record["question"]
    if isinstance(question, str):
        question = _INLINE_CHOICES.sub("", question)
    meta: dict[str, Any] = {"id": str(record["id"])}
    meta.update({key: record[key].strip() for key in LABELS if isinstance(record.get(key), str)})
    return choice_row(loc, record, row_id=f"medxpertqa-{split}-{record['id']}", source="medxpertqa",
                      image=[join_image(image_dir, name) for name in images], question=question,
                      options=options, answer=label, meta=meta)


def _options(value: Any) -> dict[str, Any] | None:
    """``{"A": text, ...}`` from the Hub's dict or the authors' ``[{"letter": "A", "content": text}]``."""
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return dict(value)
    if isinstance(value, list) and all(isinstance(o, dict) and isinstance(o.get("letter"), str) for o in value):
        return {o["letter"]: o.get("content") for o in value}
    return None


def _images(value: Any) -> list[str] | None:
    """File names from the Hub's ``["MM-0-a.jpeg"]`` or the authors' ``[{"image_path": "MM-0-a.jpeg"}]``."""
    if not isinstance(value, list):
        return None
    names = [v.get("image_path") if isinstance(v, dict) else v for v in value]
    if not all(isinstance(name, str) and name.strip() for name in names):
        return None
    return [name.strip() for name in names]
