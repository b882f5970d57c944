from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One medvl cache per test session: the tiny models and synth data are built once."""
    path = tmp_path_factory.mktemp("medvl-cache")
    os.environ["MEDVL_CACHE"] = str(path)
    return path


@pytest.fixture
def compose(cache_dir, tmp_path):
    """Compose a config from conf/ with overrides, like the command line does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medvl.config import CONF_DIR

    def _compose(overrides: list[str] = (), config_name: str = "train", output_dir: Path | None = None):
        GlobalHydra.instance().clear()
        extra = [f"cache_dir={cache_dir}", f"output_dir={output_dir or tmp_path / 'run'}"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=[*extra, *overrides])

    yield _compose
    GlobalHydra.instance().clear()


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
