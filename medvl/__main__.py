"""``python -m medvl <command> ...``: the ``medvl`` command (medvl.cli), also as ``torchrun -m medvl``."""

from __future__ import annotations

from medvl.cli import main

if __name__ == "__main__":
    main()
