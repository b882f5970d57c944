"""medvl's unified row format and JSONL input/output.

One row is one image-grounded conversation, in the LLaVA / 2U1 JSON shape plus metadata::

    {
      "id": "slake-test-11934",
      "image": "imgs/xmlab102/source.jpg",          # relative to the data root (or a list of paths)
      "conversations": [
        {"from": "human", "value": "<image>\nWhich organ is abnormal?"},
        {"from": "gpt", "value": "Liver"}
      ],
      "answer_type": "OPEN",                         # CLOSED / OPEN, or null where unknown
      "category": "open_abnormality",                # a medvl.data.taxonomy id, or null
      "source": "slake",                             # dataset the row came from
      "meta": {...}                                  # dataset-specific labels, kept verbatim
    }

Image paths are relative to the data root: the folder given as ``data.root``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

IMAGE_TOKEN = "<image>"
HUMAN = "human"
GPT = "gpt"


def make_row(
    row_id: str,
    image: str | list[str] | None,
    question: str,
    answer: str,
    *,
    answer_type: str | None = None,
    category: str | None = None,
    source: str = "",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a single-turn unified row with the ``<image>`` placeholder in front of the question."""
    n_images = 0 if image is None else (len(image) if isinstance(image, list) else 1)
    value = (IMAGE_TOKEN + "\n") * n_images + question
    return {
        "id": row_id,
        "image": image,
        "conversations": [{"from": HUMAN, "value": value}, {"from": GPT, "value": answer}],
        "answer_type": answer_type,
        "category": category,
        "source": source,
        "meta": meta or {},
    }


def image_paths(row: dict[str, Any]) -> list[str]:
    """Return the row's image paths as a list (empty for a text-only row)."""
    image = row.get("image")
    if image is None:
        return []
    return list(image) if isinstance(image, list) else [image]


def question_of(row: dict[str, Any]) -> str:
    """The first human turn without image placeholders."""
    return row["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip()


def answer_of(row: dict[str, Any]) -> str:
    """The first assistant turn: the reference answer of a single-turn VQA row."""
    return row["conversations"][1]["value"]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file, or a JSON list file, of rows."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL (UTF-8, one object per line); return how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
