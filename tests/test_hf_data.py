"""data=hf: datasets as people download them, Parquet files or a folder ``datasets.save_to_disk`` wrote, with
images embedded or as paths, through the same row checks, rejects and report as every other converter."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medvl.data.converters import ConverterError, Reject, convert, partition

from .conftest import compose_config

#: A folder written by the real ``datasets`` library (5.2.0, ``DatasetDict.save_to_disk``): Slake-like columns,
#: a PNG and a JPEG embedded in train (one English and one Chinese row), a PNG in test.
SAVED = Path(__file__).parent / "fixtures" / "hf_saved"
#: datasets' Image feature as Arrow stores it, in Parquet and in save_to_disk's Arrow files alike.
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def image_bytes(color: str, fmt: str = "PNG", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def vqa(image, question: str = "Is there a lesion?", answer: str = "yes", **extra) -> dict:
    return {"image": image, "question": question, "answer": answer, **extra}


def embedded(data: bytes | None, path: str | None = None) -> dict:
    return {"bytes": data, "path": path}


def write_parquet(path: Path, rows: list[dict], image_type: pa.DataType = IMAGE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [pa.field(k, image_type if k == "image" else pa.infer_type([r[k] for r in rows])) for k in rows[0]]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)), path)
    return path


def save_to_disk(folder: Path, splits: dict[str, list[dict]], schema: pa.Schema) -> Path:
    """The layout DatasetDict.save_to_disk writes (compare SAVED): dataset_dict.json, and per split an Arrow IPC
    stream ``data-00000-of-00001.arrow`` with datasets' schema metadata, state.json and dataset_info.json."""
    features = {f.name: {"_type": "Image"} if f.type == IMAGE else {"dtype": str(f.type), "_type": "Value"}
                for f in schema}
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    (folder).mkdir(parents=True, exist_ok=True)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for split, rows in splits.items():
        (folder / split).mkdir()
        with pa.OSFile(str(folder / split / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, schema) as writer:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0", "_format_columns":
                 None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split}
        (folder / split / "state.json").write_text(json.dumps(state))
        (folder / split / "dataset_info.json").write_text(json.dumps({"features": features}))
    return folder


def run(out: Path, split: str, source: Path, **options) -> tuple[list[dict], list[Reject]]:
    return partition(convert("hf", out, split, source=str(source), **options))


# --- reading the two layouts ----------------------------------------------------------------------------------


def test_parquet_shards_as_the_hub_names_them(tmp_path: Path) -> None:
    red, blue = image_bytes("red"), image_bytes("blue", "JPEG")
    export = tmp_path / "vqa-rad"
    write_parquet(export / "data" / "train-00000-of-00002.parquet",
                  [vqa(embedded(red)), vqa(embedded(red, "synpic1.jpg"), "Is the heart enlarged?", "no")])
    write_parquet(export / "data" / "train-00001-of-00002.parquet", [vqa(embedded(blue), "What organ?", "liver")])
    write_parquet(export / "data" / "test-00000-of-00001.parquet", [vqa(embedded(blue))])
    out = tmp_path / "prepared"

    rows, rejects = run(out, "train", export)
    assert rejects == []
    assert [r["id"] for r in rows] == ["hf-train-0", "hf-train-1", "hf-train-2"]  # shards in order
    assert [r["conversations"][1]["value"] for r in rows] == ["yes", "no", "liver"]
    assert rows[0]["conversations"][0]["value"] == "<image>\nIs there a lesion?"
    # One file per distinct image, below the prepared folder, with the original bytes (no re-encoding).
    assert rows[0]["image"] == rows[1]["image"] and rows[0]["image"].startswith("images/")
    assert (out / rows[0]["image"]).read_bytes() == red and (out / rows[2]["image"]).read_bytes() == blue
    assert rows[2]["image"].endswith(".jpg") and sorted(p.name for p in (out / "images").iterdir()) == sorted(
        Path(r["image"]).name for r in rows[1:])
    assert [r["id"] for r in run(out, "test", export)[0]] == ["hf-test-0"]
    with pytest.raises(FileNotFoundError, match="no validation split"):
        run(out, "validation", export)


def test_a_folder_saved_by_the_datasets_library(tmp_path: Path) -> None:
    rows, rejects = run(tmp_path, "train", SAVED, lang="all")
    assert rejects == [] and [r["conversations"][1]["value"] for r in rows] == ["Yes", "是"]
    assert [Image.open(tmp_path / r["image"]).format for r in rows] == ["PNG", "JPEG"]
    assert rows[0]["meta"]["content_type"] == "Modality" and rows[0]["meta"]["qid"] == 1  # other columns kept
    assert [r["id"] for r in run(tmp_path, "test", SAVED)[0]] == ["hf-test-0"]
    # One split's folder (Dataset.save_to_disk) is that split.
    assert len(run(tmp_path, "test", SAVED / "test")[0]) == 1


def test_the_layout_the_tests_write_is_the_one_datasets_writes(tmp_path: Path) -> None:
    """save_to_disk() above writes with pyarrow what SAVED holds from the real library: the rows read the same."""
    schema = pa.ipc.open_stream(pa.memory_map(str(SAVED / "train" / "data-00000-of-00001.arrow"))).schema
    tables = {s: pa.ipc.open_stream(pa.memory_map(str(SAVED / s / "data-00000-of-00001.arrow"))).read_all()
              for s in ("train", "test")}
    ours = save_to_disk(tmp_path / "ours", {s: t.to_pylist() for s, t in tables.items()}, schema.remove_metadata())
    for split in ("train", "test"):
        assert run(tmp_path / "a", split, ours, lang="all") == run(tmp_path / "b", split, SAVED, lang="all")
    assert json.loads((ours / "train" / "state.json").read_text()).keys() == json.loads(
        (SAVED / "train" / "state.json").read_text()).keys()


def test_slake_preset_on_a_saved_folder(tmp_path: Path, cache_dir: Path) -> None:
    from medvl.data.prepare import converter_options

    cfg = compose_config(cache_dir, "prepare", ["data=hf_slake", f"data.source={SAVED}", f"data.dir={tmp_path}"])
    options = converter_options(cfg.data.format, cfg.data)
    rows, rejects = partition(convert(cfg.data.format, cfg.data.root, "train", **options))
    assert [r["id"] for r in rows] == ["1"] and rows[0]["source"] == "slake"  # ids from qid
    assert rows[0]["answer_type"] == "CLOSED" and rows[0]["category"] == "closed_modality"
    assert rows[0]["meta"]["category_rule"].endswith("slake.content_type=Modality")
    assert [(r.reason, r.raw["qid"]) for r in rejects] == [("lang_filtered", 2)]
    test, _ = partition(convert(cfg.data.format, cfg.data.root, "test", **options))
    assert test[0]["category"] == "open_anatomy" and test[0]["meta"]["modality"] == "MRI"
    assert Path(cfg.data.root) == tmp_path  # embedded images go to the prepared folder


# --- bad rows and bad inputs ------------------------------------------------------------------------------------


def test_a_blob_that_is_no_image_is_rejected_with_its_reason(tmp_path: Path) -> None:
    export = write_parquet(tmp_path / "train.parquet", [
        vqa(embedded(b"%PDF-1.4 not a picture" * 50)), vqa(embedded(None)), vqa(None), vqa(embedded(image_bytes("red")))])
    rows, rejects = run(tmp_path / "out", "train", export)
    assert len(rows) == 1 and rows[0]["id"] == "hf-train-3"  # the row number stays the row's own
    assert [(r.source, r.reason) for r in rejects] == [
        ("train.parquet:row 0", "bad_image_data"), ("train.parquet:row 1", "missing_field"),
        ("train.parquet:row 2", "missing_field")]
    assert "1100 bytes that are not an image" in rejects[0].message and "%PDF" in rejects[0].message
    assert rejects[0].raw["image"]["bytes"] == "<1100 bytes>"  # the reject line does not carry the blob
    assert [p.name for p in (tmp_path / "out" / "images").iterdir()] == [Path(rows[0]["image"]).name]


def test_a_missing_column_is_one_line_naming_it_and_the_columns_there(tmp_path: Path) -> None:
    export = write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet",
                           [{"image": embedded(image_bytes("red")), "query": "q?", "label": "a"}])
    with pytest.raises(ConverterError) as caught:
        run(tmp_path / "out", "test", tmp_path)
    assert str(caught.value) == ("data.columns.question='question' is not a column of "
                                 "data/test-00000-of-00001.parquet; its columns: image, query, label")
    rows, _ = run(tmp_path / "out", "test", export, columns={"question": "query", "answer": "label"})
    assert rows[0]["conversations"][1]["value"] == "a"
    with pytest.raises(ConverterError, match="data.columns has no field questoin; its fields are question"):
        run(tmp_path / "out", "test", export, columns={"questoin": "query"})
    with pytest.raises(ConverterError, match=r"data=hf reads data.source: add data.source="):
        list(convert("hf", tmp_path, "test"))
    with pytest.raises(ConverterError, match="does not exist"):
        run(tmp_path, "test", tmp_path / "absent")


def test_image_paths_are_read_in_place(tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / "imgs").mkdir(parents=True)
    Image.new("RGB", (32, 32), "white").save(export / "imgs" / "a.png")
    write_parquet(export / "test.parquet", [vqa("imgs/a.png"), vqa("imgs\\a.png", "Second?")], pa.string())
    rows, rejects = run(export, "test", export)  # data.root=<the folder the paths are relative to>
    assert rejects == [] and [r["image"] for r in rows] == ["imgs/a.png", "imgs/a.png"]
    assert not (export / "images").exists()  # nothing copied
    # With data.root left at the prepared folder, one line says which root the paths need.
    with pytest.raises(ConverterError, match=f"not below data.root={tmp_path / 'out'}: add data.root={export}"):
        run(tmp_path / "out", "test", export)


def test_a_list_of_images_is_one_row_with_several(tmp_path: Path) -> None:
    red, blue = image_bytes("red"), image_bytes("blue")
    export = write_parquet(tmp_path / "train.parquet", [vqa([embedded(red), embedded(blue)])], pa.list_(IMAGE))
    rows, _ = run(tmp_path / "out", "train", export)
    assert len(rows[0]["image"]) == 2 and rows[0]["conversations"][0]["value"].count("<image>") == 2


def test_explicit_splits_and_unnamed_files(tmp_path: Path) -> None:
    export = write_parquet(tmp_path / "export" / "mydata.parquet", [vqa(embedded(image_bytes("red")))])
    with pytest.raises(FileNotFoundError, match=r"no test split .*data.options.splits=\{test: <file or folder>\}"):
        run(tmp_path / "out", "test", export)
    rows, _ = run(tmp_path / "out", "test", export, splits={"test": "mydata.parquet"})
    assert len(rows) == 1


# --- through medvl.prepare to training's reader ---------------------------------------------------------------


def test_prepared_hf_data_is_what_training_and_evaluation_read(tmp_path: Path, cache_dir: Path) -> None:
    from medvl.data.dataset import VQADataset
    from medvl.data.images import load_rgb
    from medvl.data.prepare import prepare
    from medvl.data.splits import load_split
    from medvl.models.loading import load_processor, resolve_model_path

    red, blue = image_bytes("red"), image_bytes("blue", "JPEG")
    whole = io.BytesIO()
    Image.radial_gradient("L").save(whole, "JPEG")
    corrupt = whole.getvalue()[: len(whole.getvalue()) // 2]  # the header reads, the pixels do not
    export = tmp_path / "export"
    write_parquet(export / "data" / "train-00000-of-00001.parquet", [
        vqa(embedded(red)), vqa(embedded(red), "Is the liver enlarged?", "no"), vqa(embedded(corrupt)),
        vqa(embedded(b"GIF89a? no: text")), vqa(embedded(blue), "Which organ?", "liver")])
    write_parquet(export / "data" / "test-00000-of-00001.parquet", [vqa(embedded(blue)), vqa(embedded(red))])
    out = tmp_path / "prepared"
    cfg = compose_config(cache_dir, "prepare", ["data=hf_vqa_rad", f"data.source={export}", f"data.dir={out}",
                                                "model=tiny", "workers=1"])
    report = prepare(cfg)

    assert report["splits"]["train"]["by_reason"] == {"image_unreadable": 1, "bad_image_data": 1}
    assert report["splits"]["train"]["kept"] == 3 and report["splits"]["test"]["kept"] == 2
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["reason"]: r["source"] for r in rejects} == {
        "bad_image_data": "data/train-00000-of-00001.parquet:row 3", "image_unreadable": "train:item 2"}
    assert all(len(line) < 2000 for line in (out / "rejects.jsonl").read_text().splitlines())
    assert report["data"]["root"] == str(out.absolute())  # the images are below the prepared folder

    data = compose_config(cache_dir, "train", ["data=hf_vqa_rad", f"data.dir={out}", "model=tiny"]).data
    train, test = load_split(data, "train"), load_split(data, "test")
    assert [r["id"] for r in train] == ["vqa_rad-train-0", "vqa_rad-train-1", "vqa_rad-train-4"]
    assert {r["source"] for r in train + test} == {"vqa_rad"} and all(r["category"] for r in test)
    assert len({r["image"] for r in train + test}) == 2  # two distinct images, each written once
    assert load_rgb(Path(data.root) / test[0]["image"]).size == (64, 48)
    processor = load_processor(cfg.model, resolve_model_path(cfg.model))
    item = VQADataset(train, processor, data.root, system_prompt=None)[0]
    assert item["pixel_values"].shape[0] > 0
