"""docs/architecture.md names the function at each step of a sample's path: every name it gives must exist."""

from __future__ import annotations

import importlib
import re

from tests.conftest import REPO

DOC = REPO / "docs" / "architecture.md"


def resolve(dotted: str) -> object:
    """The module, or the attribute of the longest importable module prefix, ``dotted`` names."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the doc names something that is not there
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_name_in_the_architecture_doc_exists() -> None:
    names = sorted(set(re.findall(r"`(medvl(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`", DOC.read_text(encoding="utf-8"))))
    assert len(names) > 25  # the sample's path names a function at each step
    for name in names:
        resolve(name)
