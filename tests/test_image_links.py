"""Image folders linked into ``data.root`` (how shared datasets are often laid out): refused by default with a
message that names ``data.follow_symlinks``, accepted when it is set, while ``..`` and absolute paths in rows
stay refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from medvl.data.format import IMAGE_TOKEN, read_jsonl, write_jsonl
from medvl.data.row_checks import default_checks, first_problem

from .conftest import prepare_cfg


def row(row_id: str, image: str) -> dict:
    return {"id": row_id, "image": image, "answer_type": "CLOSED", "category": "closed_modality",
            "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\nIs this a CT?"},
                              {"from": "gpt", "value": "yes"}]}


@pytest.fixture
def linked_root(tmp_path) -> Path:
    """root/imgs is a link to a shared folder outside root; root/own holds a real image."""
    shared = tmp_path / "shared" / "slake_images"
    shared.mkdir(parents=True)
    Image.new("RGB", (40, 30), (50, 50, 50)).save(shared / "a.png")
    root = tmp_path / "root"
    (root / "own").mkdir(parents=True)
    Image.new("RGB", (40, 30), (50, 50, 50)).save(root / "own" / "b.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "outside.png")
    os.symlink(shared, root / "imgs")
    return root


def reasons(rows: list[dict], root: Path, **kwargs) -> dict[str, tuple[str | None, str]]:
    out = {}
    checks = default_checks(**kwargs)
    for item in rows:
        problem = first_problem(item, root, checks)
        out[item["id"]] = (None, "") if problem is None else (problem.reason, problem.message)
    return out


def test_a_linked_folder_is_refused_by_default_with_the_way_out(linked_root) -> None:
    got = reasons([row("linked", "imgs/a.png"), row("own", "own/b.png")], linked_root)
    assert got["own"] == (None, "")
    reason, message = got["linked"]
    assert reason == "image_outside_root"
    assert "symbolic link" in message and "data.follow_symlinks=true" in message


@pytest.mark.parametrize("follow", [False, True])
def test_dotdot_and_absolute_paths_stay_refused(linked_root, follow) -> None:
    outside = str(linked_root.parent / "outside.png")
    rows = [row("up", "../outside.png"), row("up-inside", "own/../../outside.png"), row("abs", outside),
            row("linked-up", "imgs/../../outside.png")]
    got = reasons(rows, linked_root, follow_symlinks=follow)
    assert {k: r for k, (r, _) in got.items()} == dict.fromkeys(["up", "up-inside", "abs", "linked-up"],
                                                                "image_outside_root")
    assert all("'..' or an absolute path" in m for _, m in got.values())


def test_follow_symlinks_accepts_linked_folders(linked_root) -> None:
    rows = [row("linked", "imgs/a.png"), row("own", "own/b.png"), row("abs-inside", str(linked_root / "own/b.png")),
            row("linked-missing", "imgs/nope.png")]
    got = reasons(rows, linked_root, follow_symlinks=True)
    assert got["linked"] == got["own"] == got["abs-inside"] == (None, "")
    assert got["linked-missing"][0] == "image_missing"


def test_prepare_and_training_read_linked_images(linked_root, tmp_path, cache_dir, compose) -> None:
    from medvl.data.dataset import VQADataset
    from medvl.data.prepare import prepare
    from medvl.data.splits import load_split
    from medvl.models.loading import load_processor

    for split in ("train", "test"):
        write_jsonl(linked_root / f"{split}.jsonl", [row(f"{split}-linked", "imgs/a.png"), row(f"{split}-own", "own/b.png")])
    out = tmp_path / "prepared"
    refused = prepare(prepare_cfg(cache_dir, [f"data.root={linked_root}", f"data.dir={out}"]))
    assert refused["splits"]["train"]["by_reason"] == {"image_outside_root": 1}
    message = read_jsonl(out / "rejects.jsonl")[0]["message"]
    assert "data.follow_symlinks=true" in message

    report = prepare(prepare_cfg(cache_dir, [f"data.root={linked_root}", f"data.dir={out}",
                                             "data.follow_symlinks=true"]))
    assert report["total"]["rejected"] == 0 and report["data"]["follow_symlinks"] is True
    cfg = compose(["data=llava", f"data.dir={out}", "data.root=" + str(linked_root)])
    rows = load_split(cfg.data, "train")
    item = VQADataset(rows, load_processor(cfg.model), cfg.data.root)[0]
    assert item["input_ids"].numel() == rows[0]["meta"]["n_tokens"]
