"""The declared dependencies are the imported ones (deptry, configured in pyproject.toml's [tool.deptry])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def _deptry(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deptry", "--no-ansi", "."], cwd=root, capture_output=True,
                          text=True, timeout=300)


def test_every_declared_dependency_is_imported_and_every_import_declared() -> None:
    result = _deptry(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_dependency_nothing_imports_fails_the_check(tmp_path) -> None:
    # The same configuration on a copy with one more dependency: the check must not pass it by.
    shutil.copytree(REPO / "medvl", tmp_path / "medvl", ignore=shutil.ignore_patterns("__pycache__", "conf"))
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert "dependencies = [\n" in pyproject
    (tmp_path / "pyproject.toml").write_text(
        pyproject.replace("dependencies = [\n", 'dependencies = [\n    "medvl-never-imported",\n', 1), encoding="utf-8")
    result = _deptry(tmp_path)
    assert result.returncode == 1
    assert "DEP002 'medvl-never-imported' defined as a dependency but not used" in result.stdout + result.stderr
