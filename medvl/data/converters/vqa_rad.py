"""VQA-RAD in the MEVF JSON layout (``trainset.json`` / ``testset.json`` and ``images/``).

The root is MEVF's ``data_RAD`` folder: ``<name>set.json`` is how MEVF's ``dataset_RAD.py``
names its inputs, and the images (``synpicNNNN.jpg``) sit in ``images/`` next to them (the
layout MUMC's config points at as ``vqa_root: .../images/``). MEVF itself trains from image
pickles, so ``image_dir`` is an option for copies that keep the JPEGs elsewhere. VQA-RAD has no
validation split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medvl.data.converters._common import (
    Reject,
    Row,
    check_record,
    image_field,
    iter_records,
    join_image,
    split_file,
    text_fields,
)
from medvl.data.format import make_row

FILES = {
    "train": ("trainset.json",),
    "test": ("testset.json",),
}
META_KEYS = ("qid", "image_organ", "answer_type", "question_type", "phrase_type")
REQUIRED = ("qid", "image_name", "question", "answer")


def convert_vqa_rad(root: Path, split: str, *, file: str | None = None,
                    image_dir: str = "images") -> Iterator[Row | Reject]:
    path = split_file(root, split, FILES, file, "vqa_rad")
    for item in iter_records(path):
        if isinstance(item, Reject):
            yield item
            continue
        loc, record = item
        problem = check_record(loc, record, REQUIRED)
        if problem:
            yield problem
            continue
        qa = text_fields(record, loc)
        if isinstance(qa, Reject):
            yield qa
            continue
        image = image_field(loc, record, "image_name")
        if isinstance(image, Reject):
            yield image
            continue
        yield make_row(
            f"vqa_rad-{split}-{record['qid']}",
            join_image(image_dir, image),
            *qa,
            answer_type=record.get("answer_type"),
            source="vqa_rad",
            meta={k: record[k] for k in META_KEYS if k in record},
        )
