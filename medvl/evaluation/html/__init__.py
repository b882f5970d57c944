"""The self-contained HTML report (``report.html``): :mod:`.page` renders sections of tables and charts
(:mod:`.svg`) and the predictions browser (:mod:`.browser`) through ``templates/report.html.j2``.

It knows no metrics.json: ``medvl.evaluation.report`` (an evaluation, and base vs fine-tuned) and
``medvl.evaluation.compare`` (a comparison) build the tables from the same frames as their Markdown.
"""

from __future__ import annotations

from medvl.evaluation.html.browser import (
    CORRECTNESS_NOTE,
    MAX_ROWS,
    MAX_THUMBNAILS,
    Browser,
    build_browser,
    correct,
    image_index,
    thumbnail,
)
from medvl.evaluation.html.page import REPORT, Section, Table, json_script, render, write
from medvl.evaluation.html.svg import chart_svg

__all__ = [
    "CORRECTNESS_NOTE", "MAX_ROWS", "MAX_THUMBNAILS", "REPORT", "Browser", "Section", "Table", "build_browser",
    "chart_svg", "correct", "image_index", "json_script", "render", "thumbnail", "write",
]
