"""``medvl.prepare`` end to end: real sample rows (tests/fixtures/samples) with stand-in images of many sizes,
formats and pixel modes, plus planted bad rows. The fast path (image headers) and the full path (the real
dataset item and collator) must give the same verdict and token length on every row."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvl.data.converters import REASONS, format_multiple_choice
from medvl.data.format import IMAGE_TOKEN, read_jsonl
from medvl.data.taxonomy import CATEGORIES

from .conftest import compose_config

SAMPLES = Path(__file__).parent / "fixtures" / "samples"
MAX_LENGTH = 700

# (format, mode, size) of the stand-in images, cycled over the images the sample rows name. JPEG and PNG
# take the header-only route; GIF, BMP and TIFF are decoded by the fast path too.
SPECS = [
    ("JPEG", "RGB", (320, 240)), ("JPEG", "L", (512, 512)), ("JPEG", "CMYK", (200, 300)),
    ("PNG", "I;16", (256, 200)), ("PNG", "P", (300, 200)), ("PNG", "P+t", (128, 96)), ("PNG", "RGBA", (240, 320)),
    ("PNG", "LA", (96, 96)), ("PNG", "1", (150, 150)), ("PNG", "L", (10, 10)), ("PNG", "RGB", (30, 1500)),
    ("JPEG", "RGB+p", (400, 300)), ("GIF", "P", (120, 80)), ("BMP", "RGB", (64, 48)), ("TIFF", "I;16", (90, 120)),
]
LARGE = [("JPEG", "RGB", (2000, 1500)), ("PNG", "I;16", (1600, 2000)), ("PNG", "RGBA", (1800, 1200)),
         ("JPEG", "CMYK", (1200, 2000)), ("PNG", "P", (2000, 900))]


def encoded(fmt: str, mode: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    grey = Image.fromarray(rng.normal(128, 30 + seed % 40, size[::-1]).clip(0, 255).astype(np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(grey).astype(np.uint16) * 16 + 100)
    elif mode == "P+t":
        image = grey.convert("P")
        image.info["transparency"] = 0
    else:
        image = grey.convert(mode.split("+")[0])
    buf = io.BytesIO()
    kwargs = {"transparency": 0} if mode == "P+t" else {"progressive": True} if mode == "RGB+p" else {}
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def sample(name: str):
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def llava(row_id: str, image, question: str, answer: str, **extra) -> dict:
    n = 0 if image is None else len(image) if isinstance(image, list) else 1
    return {"id": row_id, "image": image, **extra,
            "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n" * n + question},
                              {"from": "gpt", "value": answer}]}


def real_rows() -> tuple[list[dict], list[dict]]:
    """Train and test rows in the LLaVA format from every sample file."""
    train = [llava(f"slake-{r['qid']}", f"imgs/slake/{r['img_name']}", r["question"], r["answer"],
                   answer_type=r["answer_type"], meta={"content_type": r["content_type"]})
             for r in sample("slake_train_en.json")]
    few = sample("llava_med_instruct_fewshot_rows.json")["rows"]
    for k, r in enumerate(few):
        turns = [dict(t) for t in r["conversations"]]
        turns[0]["value"] = f"{IMAGE_TOKEN}\n{turns[0]['value']}"
        train.append({"id": f"instruct-{k}", "image": f"imgs/pmc/fig{k}.jpg", "conversations": turns})
    for k, prompt in enumerate(sample("llava_med_alignment_prompts.json")["prompts"]):
        train.append(llava(f"align-{k}", f"imgs/pmc/fig{k % 8}.jpg", prompt, "Chest radiograph with a right pleural effusion."))
    test = [llava(f"slake-{r['qid']}", f"imgs/slake/{r['img_name']}", r["question"], r["answer"],
                  answer_type=r["answer_type"], meta={"content_type": r["content_type"]})
            for r in sample("slake_validate_en.json")]
    test += [llava(f"rad-{r['qid']}", f"imgs/rad/{r['image_name']}", r["question"], str(r["answer"]),
                   answer_type=r["answer_type"], meta={"question_type": r["question_type"]})
             for r in sample("vqa_rad_test.json")]
    test += [llava(f"path-{k}", "imgs/" + r["image_path"].replace("\\", "/"), r["question"], r["answer"])
             for k, r in enumerate(sample("pathvqa_test.json"))]
    for r in sample("gmai_mmbench_val.json"):
        options = {c: r[c] for c in "ABCDE" if r.get(c)}
        test.append(llava(f"gmai-{r['index']}", f"imgs/gmai/{r['index']}.jpg",
                          format_multiple_choice(r["question"], options), r["answer"], answer_type="CLOSED",
                          meta={"task": r["clinical vqa task"], "options": options}))
    return train, test


#: Planted row id -> the reason both paths must give (None: kept).
PLANTED = {
    "bad-missing": "image_missing",
    "bad-outside": "image_outside_root",
    "bad-garbage": "image_unreadable",
    "bad-empty-file": "image_unreadable",
    "bad-cut-jpeg": "image_unreadable",
    "bad-no-eoi": "image_unreadable",
    "bad-cut-png": "image_unreadable",
    "bad-flipped-png": "image_unreadable",
    "bad-cut-gif": "image_unreadable",
    "bad-two-placeholders": "placeholder_mismatch",
    "bad-placeholder-in-answer": "placeholder_mismatch",
    "bad-roles": "bad_roles",
    "bad-empty-answer": "empty_answer",
    "bad-too-long": "too_long",
    "bad-aspect-ratio": "bad_value",
    "bad-special-token": "bad_value",
    "ok-trailing-bytes": None,
    "ok-text-only": None,
    "ok-two-images": None,
    "ok-no-iend": None,
    "bad-too-long-then-reused": None,  # a rejected row does not take its id: the second row is kept
}


def planted_rows(root: Path, first_id: str) -> list[dict]:
    bad = root / "imgs" / "bad"
    jpeg = encoded("JPEG", "RGB", (700, 500), 1)
    png = encoded("PNG", "RGB", (300, 260), 2)
    write(bad / "garbage.jpg", b"this is not an image\n" * 20)
    write(bad / "empty.png", b"")
    write(bad / "cut.jpg", jpeg[: len(jpeg) // 2])
    write(bad / "no_eoi.jpg", jpeg[:-2])
    write(bad / "trailing.jpg", jpeg + b"\0" * 100)
    write(bad / "cut.png", png[: len(png) // 2])
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0xFF
    write(bad / "flipped.png", bytes(flipped))
    write(bad / "no_iend.png", png[:-12])
    gif = encoded("GIF", "P", (200, 200), 3)
    write(bad / "cut.gif", gif[: len(gif) // 3])
    write(bad / "thin.png", encoded("PNG", "L", (2000, 8), 4))
    long_question = " ".join(["Describe every visible structure, its density and its borders in detail."] * 60)
    rows = [
        llava("bad-missing", "imgs/bad/nope.jpg", "What is shown?", "nothing"),
        llava("bad-outside", "../../etc/passwd", "What is shown?", "nothing"),
        llava("bad-garbage", "imgs/bad/garbage.jpg", "What is shown?", "nothing"),
        llava("bad-empty-file", "imgs/bad/empty.png", "What is shown?", "nothing"),
        llava("bad-cut-jpeg", "imgs/bad/cut.jpg", "What is shown?", "nothing"),
        llava("bad-no-eoi", "imgs/bad/no_eoi.jpg", "What is shown?", "nothing"),
        llava("bad-cut-png", "imgs/bad/cut.png", "What is shown?", "nothing"),
        llava("bad-flipped-png", "imgs/bad/flipped.png", "What is shown?", "nothing"),
        llava("bad-cut-gif", "imgs/bad/cut.gif", "What is shown?", "nothing"),
        llava("bad-two-placeholders", "imgs/bad/trailing.jpg", f"{IMAGE_TOKEN}\nCompare the two.", "same"),
        {"id": "bad-placeholder-in-answer", "image": "imgs/bad/trailing.jpg",
         "conversations": [{"from": "human", "value": "What is shown?"}, {"from": "gpt", "value": f"this {IMAGE_TOKEN}"}]},
        {"id": "bad-roles", "image": None, "conversations": [{"from": "gpt", "value": "Hello"},
                                                             {"from": "human", "value": "Is it normal?"}]},
        llava("bad-empty-answer", "imgs/bad/trailing.jpg", "What is shown?", "   "),
        llava("bad-too-long", "imgs/bad/trailing.jpg", long_question, "Normal study."),
        llava("bad-aspect-ratio", "imgs/bad/thin.png", "What is shown?", "a line"),
        llava("bad-special-token", "imgs/bad/trailing.jpg", "Is there <|image_pad|> here?", "no"),
        llava("ok-trailing-bytes", "imgs/bad/trailing.jpg", "What is shown?", "noise"),
        llava("ok-text-only", None, "What does CT stand for?", "Computed tomography"),
        llava("ok-two-images", ["imgs/bad/trailing.jpg", "imgs/slake/xmlab1/source.jpg"], "Compare the two images.", "same"),
        llava("ok-no-iend", "imgs/bad/no_iend.png", "What is shown?", "noise"),
        llava("bad-too-long-then-reused", "imgs/bad/trailing.jpg", long_question, "Normal study."),
        llava("bad-too-long-then-reused", "imgs/bad/trailing.jpg", "Is this reused?", "yes"),
        llava(first_id, "imgs/bad/trailing.jpg", "A second row with an id already kept?", "yes"),
    ]
    return rows


def jsonl(rows: list, malformed_at: int | None = None) -> str:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if malformed_at is not None:
        lines.insert(malformed_at, '{"id": "broken", "image": "imgs/x.jpg", "conversations": [')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("prep-data")
    train, test = real_rows()
    names = sorted({p for r in train + test for p in ([r["image"]] if isinstance(r["image"], str) else [])})
    for i, name in enumerate(names):
        fmt, mode, size = LARGE[i // 40] if i % 40 == 0 and i // 40 < len(LARGE) else SPECS[i % len(SPECS)]
        write(root / name, encoded(fmt, mode, size, i))
    planted = planted_rows(root, first_id=train[0]["id"])
    # Planted rows go in the middle, and a malformed JSON line after them: the rest is still read.
    train_rows = train[:60] + planted + train[60:]
    (root / "train.jsonl").write_text(jsonl(train_rows, malformed_at=70), encoding="utf-8")
    test_rows = test + [llava(test[3]["id"], test[3]["image"], "Duplicate of an earlier test id?", "yes")]
    (root / "test.jsonl").write_text(jsonl(test_rows), encoding="utf-8")
    return {"root": root, "n_input": {"train": len(train_rows) + 1, "test": len(test_rows)},
            "malformed_line": 71, "dup_train": train[0]["id"], "dup_test": test[3]["id"]}


def run_prepare(cache_dir: Path, root: Path, out: Path, *extra: str) -> dict:
    from medvl.data.prepare import prepare

    cfg = compose_config(cache_dir, "prepare", ["data=llava", f"data.root={root}", f"data.dir={out}", "model=tiny",
                                      f"data.max_length={MAX_LENGTH}", *extra])
    return prepare(cfg)


@pytest.fixture(scope="module")
def runs(dataset, cache_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("prep-out")
    reports = {}
    for mode, extra in {"fast": ["workers=2"], "full": ["workers=2", "full=true"], "inline": ["workers=1"]}.items():
        reports[mode] = run_prepare(cache_dir, dataset["root"], out / mode, *extra)
    return {"out": out, "reports": reports}


def outcomes(out: Path) -> dict:
    """Every row's verdict in input order: kept (split, id, n_tokens) and rejects (split, source, reason, n_tokens)."""
    kept = {s: [(r["id"], r["meta"]["n_tokens"]) for r in read_jsonl(out / f"{s}.jsonl")] for s in ("train", "test")}
    rejects = [(r["split"], r["source"], r.get("id"), r["reason"], r.get("n_tokens")) for r in read_jsonl(out / "rejects.jsonl")]
    return {"kept": kept, "rejects": rejects}


def test_fast_and_full_agree_on_every_row(runs) -> None:
    fast, full = outcomes(runs["out"] / "fast"), outcomes(runs["out"] / "full")
    assert fast == full
    assert outcomes(runs["out"] / "inline") == fast  # nor does the number of workers matter
    assert runs["reports"]["fast"]["mode"] == "fast" and runs["reports"]["full"]["mode"] == "full"
    assert runs["reports"]["fast"]["splits"] == runs["reports"]["full"]["splits"]
    n_rows = sum(len(v) for v in fast["kept"].values()) + len(fast["rejects"])
    assert n_rows > 400


def test_each_bad_row_has_its_reason(runs, dataset) -> None:
    rejects = read_jsonl(runs["out"] / "full" / "rejects.jsonl")
    by_id = {r["id"]: r for r in rejects if r.get("id")}
    kept_ids = {r["id"] for r in read_jsonl(runs["out"] / "full" / "train.jsonl")}
    for row_id, reason in PLANTED.items():
        if reason is None:
            assert row_id in kept_ids, row_id
        else:
            assert by_id[row_id]["reason"] == reason, (row_id, by_id[row_id]["message"])
    assert by_id["bad-too-long"]["n_tokens"] > MAX_LENGTH
    assert "aspect ratio" in by_id["bad-aspect-ratio"]["message"]
    assert "<|image_pad|>" in by_id["bad-special-token"]["message"]
    assert all(r["reason"] in REASONS and r["message"] and "raw" in r for r in rejects)
    malformed = [r for r in rejects if r["reason"] == "malformed_json"]
    assert [(m["split"], m["source"]) for m in malformed] == [("train", f"train.jsonl:line {dataset['malformed_line']}")]
    dups = [r for r in rejects if r["reason"] == "duplicate_id"]
    assert {(d["split"], d["id"]) for d in dups} == {("train", dataset["dup_train"]), ("test", dataset["dup_test"])}
    assert all(d["source"].startswith(f"{d['split']}:item ") for d in dups)


def test_report_counts(runs, dataset) -> None:
    report = json.loads((runs["out"] / "fast" / "report.json").read_text())
    assert report == runs["reports"]["fast"] | {"seconds": report["seconds"]}
    rejects = read_jsonl(runs["out"] / "fast" / "rejects.jsonl")
    for split, counts in report["splits"].items():
        kept = read_jsonl(runs["out"] / "fast" / f"{split}.jsonl")
        assert counts["input"] == dataset["n_input"][split]
        assert counts["kept"] == len(kept) and counts["kept"] + counts["rejected"] == counts["input"]
        assert counts["by_reason"] == _count(r["reason"] for r in rejects if r["split"] == split)
        lengths = sorted(r["meta"]["n_tokens"] for r in kept)
        assert counts["tokens"]["min"] == lengths[0] and counts["tokens"]["max"] == lengths[-1] <= MAX_LENGTH
    assert report["total"]["kept"] + report["total"]["rejected"] == sum(dataset["n_input"].values())
    assert report["data"]["format"] == "llava" and report["max_length"] == MAX_LENGTH


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


def test_type_mapping_and_category_table(runs) -> None:
    out = runs["out"] / "fast"
    test_rows = read_jsonl(out / "test.jsonl")
    mapping = json.loads((out / "type_mapping.json").read_text())
    assert set(mapping) <= {"validation", "test"}  # evaluation splits only
    mapping = mapping["test"]
    assert set(mapping) == {r["id"] for r in test_rows}  # every kept row
    for row in test_rows:
        entry = mapping[row["id"]]
        assert entry["category"] == row["category"] in CATEGORIES
        assert CATEGORIES[entry["category"]][0] == entry["answer_type"] == row["answer_type"]
        assert entry["split"] == "test" and entry["rule"] == row["meta"]["category_rule"]
    assert mapping["slake-9835"]["labels"] == {"content_type": "Modality"}
    assert mapping["rad-680"]["labels"] == {"question_type": "PRES"}
    assert mapping["gmai-0"]["labels"]["task"] == "Disease Diagnosis"
    table = (out / "categories.md").read_text()
    total = [line for line in table.splitlines() if "**total**" in line][0]
    assert total.split("|")[-2].strip() == str(len(test_rows))


def test_written_split_loads_as_training_reads_it(runs, dataset, compose) -> None:
    from medvl.data.dataset import Collator, VQADataset
    from medvl.data.splits import load_split
    from medvl.models.loading import load_processor

    cfg = compose(["data=llava", f"data.root={dataset['root']}", f"data.dir={runs['out'] / 'full'}",
                   f"data.max_length={MAX_LENGTH}"])
    rows = load_split(cfg.data, cfg.data.train_split)
    processor = load_processor(cfg.model)
    ds = VQADataset(rows, processor, cfg.data.root, system_prompt=cfg.prompt.system_prompt,
                    max_length=cfg.data.max_length)
    assert ds.lengths == [r["meta"]["n_tokens"] for r in rows]
    batch = Collator(processor.tokenizer.pad_token_id)([ds[i] for i in range(0, len(rows), 37)])
    assert batch["input_ids"].shape[0] == len(range(0, len(rows), 37))
    assert len(load_split(cfg.data, cfg.data.eval_split)) == runs["reports"]["full"]["splits"]["test"]["kept"]


def test_a_worker_that_dies_costs_only_its_row(dataset, cache_dir, tmp_path, monkeypatch) -> None:
    import medvl.data.checking as checking

    root = tmp_path / "small"
    rows = [json.loads(line) for line in (dataset["root"] / "test.jsonl").read_text().splitlines()[:12]]
    (root / "imgs").mkdir(parents=True)
    for row in rows:
        write(root / row["image"], (dataset["root"] / row["image"]).read_bytes())
    (root / "test.jsonl").write_text(jsonl(rows), encoding="utf-8")
    measure = checking.RowChecker.measure_fast

    def crash_on_one_row(self, row):
        if row["id"] == rows[5]["id"]:
            os._exit(3)  # as a segfault in an image library would; forked workers inherit this patch
        return measure(self, row)

    monkeypatch.setattr(checking.RowChecker, "measure_fast", crash_on_one_row)
    report = run_prepare(cache_dir, root, tmp_path / "out", "workers=2", "splits=[test]")
    assert report["splits"]["test"]["kept"] == 11 and report["splits"]["test"]["by_reason"] == {"bad_value": 1}
    (reject,) = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert reject["id"] == rows[5]["id"] and "died" in reject["message"]


def test_command_line(cache_dir, tiny_dir, tmp_path) -> None:
    root = tmp_path / "Slake1.0"
    train = sample("slake_train_en.json")[:8] + sample("slake_test_zh.json")[:3]
    test = sample("slake_validate_en.json")[:6]
    for name, rows in (("train.json", train), ("test.json", test)):
        write(root / name, json.dumps(rows, ensure_ascii=False).encode())
        for r in rows:
            if not (root / "imgs" / r["img_name"]).exists():
                write(root / "imgs" / r["img_name"], encoded("JPEG", "RGB", (300, 240), r["qid"]))
    env = {**os.environ, "MEDVL_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "medvl.prepare", "data=slake", f"data.root={root}", "model=tiny",
           f"data.dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "medvl.prepare slake" in proc.stdout and "lang_filtered" in proc.stdout  # the summary table
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["splits"]["train"] == report["splits"]["train"] | {"input": 11, "kept": 8, "rejected": 3,
                                                                     "filtered": 3, "by_reason": {"lang_filtered": 3}}
    assert report["splits"]["test"]["kept"] == 6 and "validation" not in report["splits"]
    assert report["data"]["lang"] == "en"
    rows = read_jsonl(tmp_path / "out" / "test.jsonl")
    mapping = json.loads((tmp_path / "out" / "type_mapping.json").read_text())["test"]
    assert [mapping[r["id"]]["labels"]["content_type"] for r in rows] == [t["content_type"] for t in test]
    assert all(r["image"].startswith("imgs/") and r["meta"]["n_tokens"] > 0 for r in rows)


def test_data_root_must_be_given(cache_dir) -> None:
    from medvl.data.prepare import prepare

    with pytest.raises(ValueError, match=r"data.root=<folder>"):
        prepare(compose_config(cache_dir, "prepare", ["data=slake"]))


def test_converter_options_come_from_the_data_config():
    from omegaconf import OmegaConf

    from medvl.data.prepare import converter_options

    cfg = OmegaConf.create({"lang": "zh", "options": {"file": "my_test.json", "image_dir": "pics"}})
    assert converter_options("slake", cfg) == {"lang": "zh", "file": "my_test.json", "image_dir": "pics"}
    assert converter_options("pathvqa", OmegaConf.create({"lang": "en", "options": {}})) == {}
    with pytest.raises(ValueError, match=r"data.options \['colour'\] not accepted by the slake converter"):
        converter_options("slake", OmegaConf.create({"lang": "en", "options": {"colour": 1}}))
