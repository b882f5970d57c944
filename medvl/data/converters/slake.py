"""SLAKE 1.0 (``train.json`` / ``validate.json`` / ``test.json`` and ``imgs/``).

The root is the ``Slake1.0`` folder. Each file mixes English and Chinese rows (``q_lang``);
``lang`` picks ``en`` (default), ``zh`` or ``all``. Rows of the other language are yielded as
``lang_filtered`` Rejects so that kept + rejected always equals the rows read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medvl.data.converters._common import Reject, Row, convert_records, flat_vqa_row, split_file

FILES = {
    "train": ("train.json",),
    "validation": ("validate.json",),
    "test": ("test.json",),
}
LANGS = ("en", "zh", "all")
#: Kept verbatim in ``meta``; ``content_type`` drives the category, ``answer_type`` closed/open.
META_KEYS = ("qid", "img_id", "q_lang", "answer_type", "content_type", "modality", "location",
             "base_type", "triple")
REQUIRED = ("qid", "img_name", "question", "answer")


def convert_slake(root: Path, split: str, *, lang: str = "en", file: str | None = None,
                  image_dir: str = "imgs") -> Iterator[Row | Reject]:
    if lang not in LANGS:
        raise ValueError(f"slake: lang must be one of {LANGS}, got {lang!r}")
    path = split_file(root, split, FILES, file, "slake")

    def other_language(loc: str, record: Any) -> Reject | None:
        if lang != "all" and record["q_lang"] != lang:
            return Reject(loc, "lang_filtered", f"q_lang {record['q_lang']!r} is not {lang!r}", raw=record)
        return None

    def row_of(_: int, loc: str, record: Any) -> Row | Reject:
        return flat_vqa_row(loc, record, required=REQUIRED + (("q_lang",) if lang != "all" else ()),
                            image_key="img_name", image_dir=image_dir, row_id=lambda r: f"slake-{split}-{r['qid']}",
                            source="slake", meta_keys=META_KEYS, keep=other_language)

    yield from convert_records(path, row_of)
