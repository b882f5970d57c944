from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def benchmark_module(name: str):
    """``benchmarks/<name>.py`` imported as a module (benchmarks/ on the path for its sibling imports, and the module
    in ``sys.modules`` while in use: dataclasses look their module up there)."""
    bench_dir = REPO / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    spec = importlib.util.spec_from_file_location(name, bench_dir / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(bench_dir))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One medvl cache per test session: the tiny models and synth data are built once."""
    path = tmp_path_factory.mktemp("medvl-cache")
    os.environ["MEDVL_CACHE"] = str(path)
    return path


@pytest.fixture
def compose(cache_dir, tmp_path):
    """Compose a config from conf/ with overrides, like the command line does."""

    def _compose(overrides: list[str] = (), config_name: str = "train", output_dir: Path | None = None):
        return compose_config(cache_dir, config_name, list(overrides), output_dir or tmp_path / "run")

    return _compose


@pytest.fixture(scope="session")
def tiny_dir(cache_dir) -> Path:
    from medvl.models.tiny import build_tiny

    return build_tiny(cache_dir / "models" / "tiny-qwen2-vl")


@pytest.fixture(scope="session")
def tiny25_dir(cache_dir) -> Path:
    from medvl.models.tiny import build_tiny

    return build_tiny(cache_dir / "models" / "tiny-qwen2_5-vl", family="qwen2_5_vl")


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    from medvl.data.synth import ensure_synth

    root = tmp_path_factory.mktemp("synth-small")
    return ensure_synth(root, {"train": 96, "validation": 24, "test": 48})


@pytest.fixture(scope="module")
def rows(small_synth) -> list[dict]:
    """Rows of different lengths (packing, attention and loss tests): other image sizes (other grids), two images
    in one row, no image."""
    from PIL import Image

    from medvl.data.format import make_row, read_jsonl

    for size in [(300, 170), (56, 112)]:
        Image.new("RGB", size, color=(size[0] % 255, 90, 30)).save(small_synth / f"pack_{size[0]}x{size[1]}.png")
    return [*read_jsonl(small_synth / "train.jsonl")[:2],
            make_row("wide", "pack_300x170.png", "What is shown here?", "a wide grey field"),
            make_row("text", None, "What does MRI stand for?", "magnetic resonance imaging"),
            make_row("two", ["pack_300x170.png", "pack_56x112.png"], "Compare the two images.", "the same")]


def adapter_run(path: Path, init_from: Path | None = None, weights: bytes = b"stage weights") -> Path:
    """A run directory as medvl.train leaves it, without training: ``adapter/`` (a stand-in adapter's files) and a
    ``config.yaml`` recording the earlier stage it was trained on top of."""
    from omegaconf import OmegaConf

    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_config.json").write_text("{}")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(weights)
    OmegaConf.save(OmegaConf.create({"init_from": str(init_from) if init_from else None}), path / "config.yaml")
    return path


def small_data_overrides(root: Path) -> list[str]:
    return [f"data.root={root}", "data.num_train=96", "data.num_validation=24", "data.num_test=48"]


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def validation_steps(monkeypatch) -> list[int]:
    """The steps at which GenerationEvalCallback.run is called, in order (the real run still runs)."""
    from medvl.training.callbacks import GenerationEvalCallback

    calls: list[int] = []
    original = GenerationEvalCallback.run

    def counting_run(self, model, step):
        calls.append(step)
        return original(self, model, step)

    monkeypatch.setattr(GenerationEvalCallback, "run", counting_run)
    return calls


# --- helpers and fixtures that several test modules share (test modules import from here, never from each other)

#: The tiny models of the packable families: Qwen2-VL, Qwen2.5-VL, Qwen3-VL and its MoE.
PACKABLE = ["tiny", "tiny25", "tiny3", "tiny3_moe"]


def loss_and_grads(model, batch):
    """(loss, logits, every parameter's gradient) of one forward and backward of ``model`` on ``batch``."""
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads


def compose_config(cache_dir: Path, config_name: str, overrides: list[str], output_dir: Path | str = "unused"):
    """``config_name`` composed with command-line ``overrides`` outside any Hydra run (module-scoped fixtures
    cannot use the ``compose`` fixture)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medvl.config import CONF_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name, overrides=[f"cache_dir={cache_dir}", f"output_dir={output_dir}",
                                                         *overrides])
    finally:
        GlobalHydra.instance().clear()


def run_eval(cache_dir: Path, out: Path, overrides: list[str]) -> dict:
    """What ``python -m medvl.eval <overrides>`` does, with ``out`` as the Hydra output dir."""
    from medvl.evaluation.run import evaluate

    return evaluate(compose_config(cache_dir, "eval", overrides, out), overrides)


def prepare_cfg(cache_dir: Path, overrides: list[str]):
    """A ``medvl.prepare`` config for a dataset in medvl's own format (``data=llava``), tiny model, one worker."""
    return compose_config(cache_dir, "prepare", ["data=llava", "model=tiny", "workers=1", *overrides])


#: A question long enough to pass a small max_length with the tiny model (16 image tokens at most).
LONG_QUESTION = "Describe every structure visible in this image and its position relative to the others. " * 4


def vqa_row(row_id: str, image: str, question: str, answer: str) -> dict:
    from medvl.data.format import IMAGE_TOKEN

    return {"id": row_id, "image": image, "answer_type": "OPEN", "category": "open_description",
            "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
                              {"from": "gpt", "value": answer}]}


def make_dataset(root: Path) -> dict[str, list[dict]]:
    """A small dataset in medvl's own format: two short and two long rows per split."""
    from PIL import Image

    from medvl.data.format import write_jsonl

    (root / "imgs").mkdir(parents=True)
    Image.new("RGB", (64, 48), (90, 90, 90)).save(root / "imgs" / "a.png")
    splits = {}
    for split in ("train", "test"):
        splits[split] = [vqa_row(f"{split}-short-{k}", "imgs/a.png", "What modality is this?", "CT") for k in range(2)]
        splits[split] += [vqa_row(f"{split}-long-{k}", "imgs/a.png", LONG_QUESTION, "CT") for k in range(2)]
        write_jsonl(root / f"{split}.jsonl", splits[split])
    return splits


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar under ``run_dir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in run_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


@pytest.fixture
def no_wandb_login(monkeypatch, tmp_path) -> Path:
    """No API key anywhere: no WANDB_* variables and a HOME without ~/.netrc."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_DIR", "WANDB_DATA_DIR",
                "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_RUN_GROUP", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    return home


PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@contextlib.contextmanager
def unreachable_wandb_server(monkeypatch, key: str):
    """``WANDB_API_KEY=key`` and a W&B server nobody listens on (refused at once), with no proxy in between;
    yields its ``host:port``. The port stays bound (not listening) while in use, so that no other process
    (wandb's own service, a DataLoader worker) can take it and answer."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        monkeypatch.setenv("WANDB_API_KEY", key)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"


@pytest.fixture
def multirun_context(cache_dir, tmp_path):
    """Hydra's config as a multirun job sees it, with the sweep directory under tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from medvl.config import CONF_DIR

    def _enter(sweep_name: str) -> None:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            hydra_cfg = compose(config_name="train", overrides=[f"cache_dir={cache_dir}"], return_hydra_config=True)
        OmegaConf.update(hydra_cfg, "hydra.mode", "MULTIRUN")
        OmegaConf.update(hydra_cfg, "hydra.sweep.dir", str(tmp_path / "sweeps" / sweep_name))
        HydraConfig.instance().set_config(hydra_cfg)

    yield _enter
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def wandb_records(run_dir: Path) -> dict[str, list]:
    """The records of an offline run's ``run-<id>.wandb`` (a LevelDB-style log of protobuf records), by type."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, block, pos, partial = path.read_bytes(), 32768, 7, b""  # 7: the ":W&B" header
    out: dict[str, list] = {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        partial = chunk if kind in (1, 2) else partial + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(partial)
            kind_name = record.WhichOneof("record_type")
            out.setdefault(kind_name, []).append(getattr(record, kind_name))
    return out


def prediction_row(i: int, correct: bool | None, f1: float, category: str = "closed_yes_no",
                   ppl: float | None = None) -> dict:
    """A scored prediction record, closed (``correct``: True/False) or open (None)."""
    closed = correct is not None
    return {
        "id": f"q{i}",
        "question": f"question {i}?",
        "reference": "yes" if closed else "left lung",
        "prediction": "yes" if correct else "no",
        "category": category if closed else "open_location",
        "answer_type": "CLOSED" if closed else "OPEN",
        "metrics": {"exact_match": float(bool(correct)), "word_f1": f1,
                    "closed_accuracy": None if not closed else float(correct)},
        "perplexity": ppl,
    }


def make_eval_dir(
    path: Path,
    name: str,
    rows: list[dict[str, Any]],
    overall: dict[str, float] | None = None,
    by_category: dict[str, dict[str, float]] | None = None,
) -> Path:
    """A fake eval directory as `python -m medvl.eval` writes it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    metrics = {
        "run": {"name": name, "ckpt": None, "model": "tiny", "data": "synth", "prompt": "default"},
        "overall": {**(overall or {"exact_match": 0.5}), "count": len(rows)},
        "closed": {"exact_match": 0.5, "count": len(rows)},
        "open": {"count": 0},
        "by_category": by_category or {"closed_yes_no": {"exact_match": 0.5, "count": len(rows)}},
    }
    (path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return path


def compare_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m medvl.compare ARGS`` run in ``cwd``."""
    return subprocess.run([sys.executable, "-m", "medvl.compare", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
