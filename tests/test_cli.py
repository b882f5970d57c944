"""``medvl <command>`` (medvl.cli) behaves exactly like ``python -m medvl.<command>``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MEDVL_RUN_DIR"):
        if key not in env:
            environ.pop(key, None)
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=120)


def _both(command: str, args: list[str], cwd: Path, **env: str):
    """``python -m medvl <command> ARGS`` (what the ``medvl`` script runs) and ``python -m medvl.<command> ARGS``."""
    return _run(["-m", "medvl", command, *args], cwd, **env), _run(["-m", f"medvl.{command}", *args], cwd, **env)


@pytest.mark.parametrize(("command", "args", "expected"), [
    ("train", ["--cfg", "job", "model=2b", "lora.r=8"], "  name_or_path: Qwen/Qwen2-VL-2B-Instruct\n"),
    ("eval", ["--cfg", "job", "data=slake"], "  name: slake\n"),
    ("prepare", ["--cfg", "job", "data=vqa_rad", "workers=3"], "\nworkers: 3\n"),
    ("export", ["--cfg", "job", "dtype=bfloat16"], "\ndtype: bfloat16\n"),
], ids=["train", "eval", "prepare", "export"])
def test_composed_config_is_the_modules(command, args, expected, tmp_path) -> None:
    cli, module = _both(command, args, tmp_path)
    assert cli.returncode == module.returncode == 0, cli.stderr + module.stderr
    assert cli.stdout == module.stdout
    assert expected in cli.stdout


@pytest.mark.parametrize(("command", "args", "expected"), [
    ("train", ["model=nope"], "medvl: invalid choice model=nope; valid choices for model: "),
    ("train", ["trainer.lerning_rate=1"], "medvl: unknown key trainer.lerning_rate; valid keys in trainer: "),
    ("eval", ["batch_size=0"], "medvl: batch_size=0 is invalid"),
    ("prepare", ["data=nope"], "medvl: invalid choice data=nope"),
    ("export", ["dtype_typo=1"], "medvl: unknown key dtype_typo"),
    # A later stage's sweep without init_from: the multirun's own start-up check.
    ("train", ["-m", "experiment=slake_instruct_7b", "lora.r=8,16"], "medvl: "),
    ("compare", [str(Path("no") / "such" / "run")], "medvl: no such file or directory"),
])
def test_errors_are_the_modules_one_line(command, args, expected, tmp_path) -> None:
    cli, module = _both(command, args, tmp_path)
    assert cli.returncode == module.returncode != 0
    assert cli.stderr == module.stderr
    assert cli.stderr.startswith(expected) and cli.stderr.count("\n") == 1, cli.stderr
    assert not list(tmp_path.iterdir()), "a refused command wrote files"


def test_rank_handling_under_a_launcher_is_the_modules(tmp_path) -> None:
    # torchrun's environment without a shared run directory: refused in one line, as by the module.
    cli, module = _both("train", ["model=tiny"], tmp_path, WORLD_SIZE="2", RANK="0")
    assert cli.returncode == module.returncode == 1
    assert cli.stderr == module.stderr
    assert "needs one run directory that every rank agrees on" in cli.stderr
    # A sweep inside the ranks is refused too.
    cli, module = _both("train", ["-m", "lora.r=8,16", "hydra.run.dir=x"], tmp_path, WORLD_SIZE="2", RANK="0")
    assert cli.stderr == module.stderr and "-m/--multirun cannot run inside torchrun" in cli.stderr
    # Rank 1 writes no .hydra/ (its Hydra config says so), the deepspeed launcher's --local_rank is dropped.
    args = ["--cfg", "hydra", "hydra.run.dir=run", "--local_rank=1"]
    cli, module = _both("train", args, tmp_path, WORLD_SIZE="2", RANK="1")
    assert cli.returncode == module.returncode == 0, cli.stderr
    assert cli.stdout == module.stdout
    assert "output_subdir: null" in cli.stdout


def test_usage_and_unknown_command(tmp_path) -> None:
    help_ = _run(["-m", "medvl", "--help"], tmp_path)
    assert help_.returncode == 0
    assert all(command in help_.stdout for command in ("train", "eval", "prepare", "export", "compare"))
    assert _run(["-m", "medvl"], tmp_path).returncode == 2
    unknown = _run(["-m", "medvl", "trian", "model=2b"], tmp_path)
    assert unknown.returncode == 1
    assert unknown.stderr == "medvl: unknown command 'trian'; commands: train, eval, prepare, export, compare " \
                             "(medvl --help)\n"

