"""The README's "Adding a dataset" example, run as written there: a converter module and a data config outside
medvl, found through ``data.format=module:function`` and ``hydra.searchpath``."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import REPO


def readme_block(after: str, lang: str) -> str:
    """The first fenced ``lang`` block after the line that starts with ``after`` in README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n" + after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {lang} block after {after!r} in README.md"
    return match.group(1)


def write_export(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 40), (60 * i, 20, 20)).save(root / "images" / f"{i}.png")
    for split in ("train", "test"):
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "image", "question", "answer", "site"])
            writer.writerow([1, "0.png", "Is there a lesion?", "yes", "A"])
            writer.writerow([2, "1.png", "What organ is shown?", "liver", "B"])
            writer.writerow([3, "2.png", "Is it normal?", "", "A"])


def run(argv: list[str], cwd: Path, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDVL_CACHE": str(cache_dir), "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_readme_dataset_example_prepares_and_evaluates(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "mydata.py").write_text(readme_block("`mydata.py`", "python"), encoding="utf-8")
    (tmp_path / "myconf" / "data").mkdir(parents=True)
    (tmp_path / "myconf" / "data" / "mydata.yaml").write_text(readme_block("`myconf/data/mydata.yaml`", "yaml"),
                                                             encoding="utf-8")
    write_export(tmp_path / "export")
    own = ["hydra.searchpath=[file://myconf]", "data=mydata"]

    done = run(["medvl.prepare", *own, "data.root=export"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "outputs" / "data" / "mydata"
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["mydata-test-1", "mydata-test-2"]
    assert [(r["answer_type"], r["category"]) for r in rows] == [("CLOSED", "closed_yes_no"), ("OPEN", "open_anatomy")]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {(r["split"], r["source"], r["reason"]) for r in rejects} == {
        ("train", "train.csv:line 4", "empty_answer"), ("test", "test.csv:line 4", "empty_answer")}

    done = run(["medvl.eval", *own, "metrics=[exact_match]", "hydra.run.dir=outputs/eval/mine"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "outputs" / "eval" / "mine" / "metrics.json").read_text())
    assert metrics["overall"]["count"] == 2
    assert {k: v["count"] for k, v in metrics["by_site"].items()} == {"A": 1, "B": 1}


def test_a_converter_path_that_does_not_import_is_one_line(tmp_path: Path, cache_dir: Path) -> None:
    done = run(["medvl.prepare", "data=vqa_rad", "data.format=nowhere:convert", f"data.root={tmp_path}"],
               tmp_path, cache_dir)
    assert done.returncode != 0
    assert "data.format='nowhere:convert': cannot import the converter" in done.stderr
    assert "Traceback" not in done.stderr


def test_prepare_without_a_dataset_folder_is_one_line(tmp_path: Path, cache_dir: Path) -> None:
    for argv, message in ((["data=vqa_rad"], "medvl: data=vqa_rad needs the dataset folder"),
                          (["data=vqa_rad", f"data.root={tmp_path / 'absent'}"], "is not a folder")):
        done = run(["medvl.prepare", *argv], tmp_path, cache_dir)
        assert done.returncode != 0 and message in done.stderr
        assert "Traceback" not in done.stderr
