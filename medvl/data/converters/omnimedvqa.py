"""OmniMedVQA as released (``OmniMedVQA.zip``): one JSON list per source dataset under ``QA_information/``.

Checked against: MedEvalKit's reader (alibaba-damo-academy/MedEvalKit utils/OmniMedVQA/OmniMedVQA.py: every
``*.json`` of ``QA_information/Open-access``, ``image_path`` relative to the root, options ``option_A`` ..
``option_D`` where present, ``gt_answer`` the text of the right option, scores by ``question_type`` and
``modality_type``) and a published exploration of the files (GiovanniCornejo/MediVision-OmniMedVQA src/data.py:
one record of ``Chest CT Scan.json`` names its modality ``modality`` instead of ``modality_type``, read here
as the same). lmms-eval has no OmniMedVQA task.

Records: question_id, question_type, question, gt_answer, option_A..option_D, image_path, dataset,
modality_type. The benchmark is one test set: only ``split=test`` exists. ``access`` picks the folder:
``open`` (Open-access, what MedEvalKit reports; default), ``restricted`` (Restricted-access, whose images
come from their own sources) or ``all``. Files are read in name order. ``meta`` keeps question_id,
question_type, modality, dataset (the source dataset) and access.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medvl.data.converters._choice import choice_row
from medvl.data.converters._common import (
    SPLITS,
    Reject,
    Row,
    check_record,
    image_field,
    iter_records,
    join_image,
    norm_path,
)

FOLDERS = {"open": ("Open-access",), "restricted": ("Restricted-access",),
           "all": ("Open-access", "Restricted-access")}
LETTERS = ("A", "B", "C", "D")


def convert_omnimedvqa(root: Path, split: str, *, access: str = "open", file: str | None = None,
                       image_dir: str = "") -> Iterator[Row | Reject]:
    """``file`` reads one QA JSON file (relative to root) instead of the ``access`` folders."""
    for path, folder in _files(root, split, access, file):
        for item in iter_records(path):
            yield item if isinstance(item, Reject) else _row(*item, folder, image_dir)


def _files(root: Path, split: str, access: str, file: str | None) -> list[tuple[Path, str]]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split != "test":
        raise ValueError(f"omnimedvqa has no {split!r} split; it has ('test',)")
    if access not in FOLDERS:
        raise ValueError(f"omnimedvqa: access must be one of {tuple(FOLDERS)}, got {access!r}")
    if file is not None:
        path = Path(file) if Path(file).is_absolute() else root / file
        if not path.is_file():
            raise FileNotFoundError(f"omnimedvqa: input file {path} does not exist")
        return [(path, path.parent.name)]
    folders = [root / "QA_information" / name for name in FOLDERS[access]]
    files = [(path, folder.name) for folder in folders if folder.is_dir() for path in sorted(folder.glob("*.json"))]
    if not files:
        raise FileNotFoundError(f"omnimedvqa test: no *.json in {[str(f) for f in folders]} (pass file=...)")
    return files


def _row(loc: str, record: Any, folder: str, image_dir: str) -> Row | Reject:
    bad = check_record(loc, record, ("question_id", "question", "gt_answer", "image_path"))
    if bad is not None:
        return bad
    image = image_field(loc, record, "image_path")
    if isinstance(image, Reject):
        return image
    if not any(f"option_{c}" in record for c in LETTERS):
        return Reject(loc, "missing_field", "missing option_A..option_D", raw=record)
    question_id = str(record["question_id"]).strip()
    meta: dict[str, Any] = {"question_id": question_id}
    for key, name in (("question_type", "question_type"), ("modality_type", "modality"),
                      ("modality", "modality"), ("dataset", "dataset")):
        if isinstance(record.get(key), str) and record[key].strip() and name not in meta:
            meta[name] = record[key].strip()
    meta["access"] = folder
    return choice_row(loc, record, row_id=f"omnimedvqa-test-{question_id}", source="omnimedvqa",
                      image=join_image(image_dir, norm_path(image)), question=record["question"],
                      options={c: record.get(f"option_{c}") for c in LETTERS}, answer=record["gt_answer"],
                      meta=meta)
