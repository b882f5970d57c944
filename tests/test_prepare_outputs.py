"""What ``medvl.prepare`` writes: a failed or partial rerun keeps the earlier outputs (rows, type mapping), and a
row that cannot be read is one reject line with the documented fields, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from medvl.data.converters import Reject, convert, partition
from medvl.data.format import read_jsonl

from .conftest import compose_config


def _row(row_id: str, image: str = "imgs/a.jpg", answer: str = "x") -> dict:
    return {"id": row_id, "image": image,
            "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": answer}]}


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def user_data(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    (root / "imgs").mkdir(parents=True)
    Image.new("RGB", (64, 48), (40, 90, 200)).save(root / "imgs" / "a.jpg")
    (root / "train.jsonl").write_text(_lines([_row("t1"), _row("t2", image="imgs/missing.jpg"), _row("t3")]))
    (root / "test.jsonl").write_text(_lines([_row("s1"), _row("s2", answer=" ")]))
    return root


def _prepare(cache_dir: Path, root: Path, out: Path, *extra: str) -> dict:
    from medvl.data.prepare import prepare

    return prepare(compose_config(cache_dir, "prepare", ["data=llava", f"data.root={root}", f"data.dir={out}", "model=tiny",
                                               "workers=1", *extra]))


def _outputs(out: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.iterdir())}


def test_a_failed_run_leaves_the_previous_outputs_untouched(cache_dir, user_data, tmp_path) -> None:
    out = tmp_path / "out"
    _prepare(cache_dir, user_data, out)
    before = _outputs(out)
    (user_data / "train.jsonl").write_text(_lines([_row("t9")]))  # what a half-finished run would have written
    with pytest.raises(FileNotFoundError, match="validation"):
        _prepare(cache_dir, user_data, out, "splits=[train,validation]")
    assert _outputs(out) == before


def test_a_run_of_some_splits_keeps_the_records_of_the_others(cache_dir, user_data, tmp_path) -> None:
    out = tmp_path / "out"
    _prepare(cache_dir, user_data, out)
    report = _prepare(cache_dir, user_data, out, "splits=[test]")
    # train.jsonl is left as it was, so its dropped row stays recorded and counted.
    assert [r["id"] for r in read_jsonl(out / "train.jsonl")] == ["t1", "t3"]
    rejects = read_jsonl(out / "rejects.jsonl")
    assert sorted((r["split"], r["id"]) for r in rejects) == [("test", "s2"), ("train", "t2")]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    assert set(report["splits"]) == {"train", "test"}
    assert report["splits"]["train"]["by_reason"] == {"image_missing": 1}
    assert report["total"]["input"] == 5 and report["total"]["kept"] + report["total"]["rejected"] == 5
    assert report["total"]["tokens"]["count"] == 3
    table = (out / "categories.md").read_text()
    assert "| train | test |" in table.splitlines()[2]


def test_a_jsonl_line_that_is_not_utf8_is_one_reject(tmp_path: Path) -> None:
    good = json.dumps(_row("a")).encode()
    bad = json.dumps(_row("b")).encode().replace(b"What", b"Wh\xe9t")  # Latin-1, not UTF-8
    (tmp_path / "train.jsonl").write_bytes(good + b"\n" + bad + b"\n" + good.replace(b'"a"', b'"c"') + b"\n")
    rows, rejects = partition(convert("llava", tmp_path, "train"))
    assert [r["id"] for r in rows] == ["a", "c"]
    assert [(r.source, r.reason) for r in rejects] == [("train.jsonl:line 2", "malformed_json")]


def test_a_json_list_that_is_not_utf8_is_one_reject(tmp_path: Path) -> None:
    (tmp_path / "train.json").write_bytes(b'[{"id": "a", "question": "Wh\xe9t?"}]')
    (item,) = list(convert("llava", tmp_path, "train"))
    assert isinstance(item, Reject) and item.reason == "malformed_json"


@pytest.mark.parametrize("category", [["closed_yes_no"], {"x": 1}])
def test_a_category_that_is_not_text_is_a_reject_not_a_crash(tmp_path: Path, category) -> None:
    rows = [_row("a") | {"category": category}, _row("b")]
    (tmp_path / "train.jsonl").write_text(_lines(rows))
    kept, rejects = partition(convert("llava", tmp_path, "train"))
    assert [r["id"] for r in kept] == ["b"]
    assert [r.reason for r in rejects] == ["bad_category"]


def test_type_mapping_keeps_rows_whose_ids_repeat_across_splits(cache_dir, user_data, tmp_path) -> None:
    # Users' own data is often numbered 0..N in each split.
    (user_data / "validation.jsonl").write_text(_lines([_row("0", answer="yes"), _row("1")]))
    (user_data / "test.jsonl").write_text(_lines([_row("0", answer="left lung")]))
    out = tmp_path / "out"
    _prepare(cache_dir, user_data, out)
    mapping = json.loads((out / "type_mapping.json").read_text())
    assert sorted(mapping) == ["test", "validation"] and sorted(mapping["validation"]) == ["0", "1"]
    assert mapping["validation"]["0"]["answer_type"] == "CLOSED" and mapping["test"]["0"]["answer_type"] == "OPEN"
    _prepare(cache_dir, user_data, out, "splits=[test]")  # validation's entries are carried over
    assert json.loads((out / "type_mapping.json").read_text())["validation"] == mapping["validation"]


def test_every_reject_line_has_the_documented_fields(cache_dir, user_data, tmp_path) -> None:
    (user_data / "train.jsonl").write_text(_lines([_row("t1"), {"id": "t2", "image": "imgs/a.jpg"}]) + "{oops\n")
    out = tmp_path / "out"
    _prepare(cache_dir, user_data, out)
    rejects = read_jsonl(out / "rejects.jsonl")
    fields = {"split", "source", "id", "reason", "message", "n_tokens", "raw"}
    assert rejects and all(set(r) == fields for r in rejects)
    by_source = {r["source"]: r for r in rejects}
    assert by_source["train.jsonl:line 2"]["id"] == "t2"  # a converter reject names the row's own id
    assert by_source["train.jsonl:line 3"]["id"] is None and by_source["train.jsonl:line 3"]["reason"] == "malformed_json"
