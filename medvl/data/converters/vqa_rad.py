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
from typing import Any

from medvl.data.converters._common import Reject, Row, convert_records, flat_vqa_row, split_file

FILES = {
    "train": ("trainset.json",),
    "test": ("testset.json",),
}
META_KEYS = ("qid", "image_organ", "answer_type", "question_type", "phrase_type")
REQUIRED = ("qid", "image_name", "question", "answer")


def convert_vqa_rad(root: Path, split: str, *, file: str | None = None,
                    image_dir: str = "images") -> Iterator[Row | Reject]:
    path = split_file(root, split, FILES, file, "vqa_rad")

    def row_of(_: int, loc: str, record: Any) -> Row | Reject:
        return flat_vqa_row(loc, record, required=REQUIRED, image_key="image_name", image_dir=image_dir,
                            row_id=lambda r: f"vqa_rad-{split}-{r['qid']}", source="vqa_rad", meta_keys=META_KEYS)

    yield from convert_records(path, row_of)
