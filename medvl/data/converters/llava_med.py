"""LLaVA-Med alignment (500K) and instruct (60K) data: JSON lists of LLaVA rows.

The root is LLaVA-Med's ``data/`` folder as its ``download_data.sh`` lays it out:
``alignment/llava_med_alignment_500k.json``, ``instruct/llava_med_instruct_60k*.json`` and
``images/`` (the ``image`` field is a file name inside ``images/``). Both are training data only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medvl.data.converters._common import Reject, Row, convert_records, llava_row, split_file

ALIGN_FILES = {"train": ("alignment/llava_med_alignment_500k.json",
                         "llava_med_alignment_500k.json")}
INSTRUCT_FILES = {"train": ("instruct/llava_med_instruct_60k.json", "llava_med_instruct_60k.json")}
#: Instruct fields kept in ``meta``; the caption and in-text mentions were the generator's input
#: and are long, so they stay in the source file.
INSTRUCT_META = ("pair_id", "pmid", "fig_id", "fig_label", "domain")


def convert_llava_med_align(root: Path, split: str, *, file: str | None = None,
                            image_dir: str = "images") -> Iterator[Row | Reject]:
    path = split_file(root, split, ALIGN_FILES, file, "llava_med_align")

    def row_of(_: int, loc: str, record: Any) -> Row | Reject:
        raw_id = record.get("id") if isinstance(record, dict) else None
        return llava_row(record, loc, source="llava_med_align", image_dir=image_dir,
                         row_id=None if raw_id is None else f"llava_med_align-{raw_id}",
                         image_required=True, meta={})

    yield from convert_records(path, row_of)


def convert_llava_med_instruct(root: Path, split: str, *, file: str | None = None,
                               image_dir: str = "images") -> Iterator[Row | Reject]:
    """Multi-turn rows; ``file`` picks another variant, e.g. ``instruct/llava_med_instruct_60k_inline_mention.json``."""
    path = split_file(root, split, INSTRUCT_FILES, file, "llava_med_instruct")

    def row_of(_: int, loc: str, record: Any) -> Row | Reject:
        # One conversation per figure, so the figure's pair_id identifies a row without an id.
        raw_id = record.get("id", record.get("pair_id")) if isinstance(record, dict) else None
        return llava_row(record, loc, source="llava_med_instruct", image_dir=image_dir,
                         row_id=None if raw_id is None else f"llava_med_instruct-{raw_id}",
                         image_required=True,
                         meta={k: record[k] for k in INSTRUCT_META if k in record} if isinstance(record, dict) else {})

    yield from convert_records(path, row_of)
