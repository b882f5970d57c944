"""``pip install .`` without ``-e``: the wheel carries conf/, and the ``medvl`` command runs from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

#: What a fresh clone needs to build the wheel (pyproject.toml names README.md as the long description).
SOURCES = ("pyproject.toml", "README.md", "medvl", "conf")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """The repository's wheel, installed into a folder of its own: (the wheel, that folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            # symlinks=True: medvl/conf stays the link to ../conf, as in a clone.
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # No build isolation: the venv's setuptools builds it, offline.
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, text=True)
    (wheel,) = (tmp / "dist").glob("medvl-*.whl")
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, text=True)
    return wheel, site


def _outside(site: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run from ``cwd`` (outside the repository) with the installed copy first on the path."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_wheel_holds_every_module_and_config_file(installed) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "medvl").rglob("*.py")}
    configs = {"medvl/" + p.relative_to(REPO).as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert configs and modules <= names and configs <= names
    assert not [n for n in names if n.startswith(("conf/", "tests/"))], "only the medvl package is installed"


def test_installed_package_runs_from_any_directory(installed, tmp_path) -> None:
    _, site = installed
    where = _outside(site, tmp_path, sys.executable, "-c",
                     "import medvl, medvl.config as c; print(medvl.__file__); print(c.CONF_DIR)")
    module_file, conf_dir = where.stdout.split()
    # The wheel's copy, not the repository's editable install, and its own conf/ inside the package.
    assert Path(module_file) == site / "medvl" / "__init__.py"
    assert Path(conf_dir) == site / "medvl" / "conf"
    medvl = site / "bin" / "medvl"
    job = _outside(site, tmp_path, str(medvl), "train", "--cfg", "job", "model=2b", "lora=attn")
    assert job.returncode == 0, job.stderr
    assert "name_or_path: Qwen/Qwen2-VL-2B-Instruct" in job.stdout and "name: attn" in job.stdout
    error = _outside(site, tmp_path, str(medvl), "eval", "data=nope")
    assert error.returncode == 1 and error.stderr.startswith("medvl: invalid choice data=nope; valid choices")
    assert not list(tmp_path.iterdir()), "nothing is written by --cfg or a refused override"
