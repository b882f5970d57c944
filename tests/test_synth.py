"""The synthetic medical VQA generator."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
from PIL import Image

from medvl.data.format import answer_of, question_of, read_jsonl
from medvl.data.synth import MODALITIES, ensure_synth, generate_split
from medvl.data.taxonomy import CATEGORIES


def digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic(tmp_path):
    a = generate_split(tmp_path / "a", "test", 60, seed=3)
    b = generate_split(tmp_path / "b", "test", 60, seed=3)
    c = generate_split(tmp_path / "c", "test", 60, seed=4)
    assert digest(a.parent) == digest(b.parent) != digest(c.parent)


def test_default_test_split_covers_all_twelve_categories(tmp_path):
    root = ensure_synth(tmp_path, {"test": 300})
    rows = read_jsonl(root / "test.jsonl")
    assert len(rows) == 300
    counts = Counter(r["category"] for r in rows)
    assert set(counts) == set(CATEGORIES)
    for row in rows:
        assert row["answer_type"] == CATEGORIES[row["category"]][0]
        assert (root / row["image"]).exists()
        assert row["conversations"][0]["value"].startswith("<image>\n")


def test_answers_are_determined_by_the_image(tmp_path):
    root = ensure_synth(tmp_path, {"train": 400})
    rows = read_jsonl(root / "train.jsonl")
    for row in rows:
        q, a, meta = question_of(row), answer_of(row), row["meta"]
        if q == "How many lesions are there?":
            assert a == str(meta["n_lesions"])
        if q == "Which modality is this, CT, MRI or X-Ray?":
            assert a == meta["modality"] in MODALITIES
        if q == "Is there a lesion in this image?":
            assert a == ("yes" if meta["n_lesions"] else "no")


def test_modalities_look_different(tmp_path):
    root = ensure_synth(tmp_path, {"train": 300})
    # (background, centre) grey levels: the centre of the field never holds a lesion.
    feats: dict[str, list[tuple[float, float]]] = {m: [] for m in MODALITIES}
    seen = set()
    for row in read_jsonl(root / "train.jsonl"):
        if row["image"] in seen:
            continue
        seen.add(row["image"])
        img = np.asarray(Image.open(root / row["image"]), dtype=np.float32)
        c = img.shape[0] // 2
        feats[row["meta"]["modality"]].append((img[:4, :4].mean(), img[c - 2 : c + 2, c - 2 : c + 2].mean()))
    style = {m: np.median(np.array(v), axis=0) for m, v in feats.items()}
    for a in MODALITIES:
        for b in MODALITIES:
            if a != b:
                assert np.abs(style[a] - style[b]).max() > 15, (a, b, style)


def test_ensure_synth_reuses_a_matching_dataset(tmp_path):
    ensure_synth(tmp_path, {"test": 20})
    stamp = (tmp_path / "test.jsonl").stat().st_mtime_ns
    ensure_synth(tmp_path, {"test": 20})
    assert (tmp_path / "test.jsonl").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "spec.json").read_text())["sizes"] == {"test": 20}


def test_ensure_synth_regenerates_data_made_by_other_code(tmp_path):
    ensure_synth(tmp_path, {"test": 20})
    spec = json.loads((tmp_path / "spec.json").read_text())
    (tmp_path / "spec.json").write_text(json.dumps({**spec, "code": "older-generator"}))
    (tmp_path / "test.jsonl").write_text("stale\n")
    ensure_synth(tmp_path, {"test": 20})
    assert json.loads((tmp_path / "spec.json").read_text()) == spec
    assert len((tmp_path / "test.jsonl").read_text().splitlines()) == 20
