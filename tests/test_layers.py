"""The package's layers and no-cycles rule (.importlinter), checked with import-linter's ``lint-imports``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # the dev extra installs it beside python


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_the_layer_and_cycle_contracts_hold():
    proc = lint_imports()
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_a_lower_layer_importing_a_higher_one_inside_a_function_breaks_the_contract(tmp_path):
    # medvl.config imports medvl.runs at the top, and medvl.train imports medvl.training.run only inside main():
    # either, turned upside down, must break a contract (lazy imports count too).
    for upper, lower in (("medvl.runs", "medvl.config"), ("medvl.training", "medvl.train")):
        config = tmp_path / f"{lower}.ini"
        config.write_text(f"[importlinter]\nroot_package = medvl\n\n[importlinter:contract:upside-down]\n"
                          f"name = upside down\ntype = layers\nlayers =\n    {upper}\n    {lower}\n")
        proc = lint_imports(str(config))
        assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout[-3000:]
        assert f"{lower} is not allowed to import {upper}" in proc.stdout
