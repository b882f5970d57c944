"""The report page: sections of tables and charts, and the predictions browser, rendered through one
Jinja2 template (autoescaped: every text from a dataset or a run is HTML-escaped) into one HTML file that
opens offline. CSS, JavaScript, charts (inline SVG) and thumbnails (data: URIs) are all inside it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medvl.evaluation.html.browser import Browser
from medvl.tables import write_text

REPORT = "report.html"


@dataclass
class Table:
    """A frame of cells already formatted as text (as tables.md shows them); ``bold`` marks cells like it."""

    frame: pd.DataFrame
    title: str | None = None
    bold: pd.DataFrame | None = None
    right: Sequence[str] = ()
    id: str | None = None

    def view(self) -> dict[str, Any]:
        right = set(self.right)
        rows = []
        for position, row in enumerate(self.frame.itertuples(index=False)):
            rows.append([{"text": "" if value is None else str(value),
                          "bold": self.bold is not None and bool(self.bold.iat[position, column]),
                          "right": self.frame.columns[column] in right}
                         for column, value in enumerate(row)])
        return {"title": self.title, "id": self.id, "rows": rows,
                "columns": [{"text": str(c), "right": c in right} for c in self.frame.columns]}


@dataclass
class Section:
    title: str
    id: str
    tables: list[Table] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)  # inline SVG from medvl.evaluation.html.svg
    notes: list[str] = field(default_factory=list)


def json_script(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` as ``\\u`` escapes, so no
    ``</script>`` in a question ends the element; non-finite numbers as null (JSON has none)."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, Mapping):
            return {str(k): finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    text = json.dumps(finite(data), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


#: C0 control characters but tab, newline and carriage return: a tiny model's prediction can hold any byte, and
#: HTML has no place for them (a NUL even makes the file read as binary).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _printable(value: Any) -> Any:
    """Text with its control characters as U+FFFD; markup marked safe (the charts' SVG) as it is."""
    return _CONTROL.sub("\ufffd", value) if isinstance(value, str) and not hasattr(value, "__html__") else value


def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("medvl.evaluation.html", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, finalize=_printable)


def render(title: str, *, meta: Sequence[tuple[str, str]] = (), warnings: Sequence[str] = (),
           sections: Sequence[Section] = (), browser: Browser | None = None, links: Sequence[tuple[str, str]] = (),
           data: Any = None) -> str:
    """The page. ``meta``: (label, value) lines under the title; ``links``: (text, relative path) to other
    reports beside this one; ``data``: embedded as JSON (``#medvl-data``) for whoever wants the raw numbers."""
    template = _environment().get_template("report.html.j2")
    return template.render(
        title=title, meta=list(meta), warnings=list(warnings), links=list(links),
        sections=[{"title": s.title, "id": s.id, "notes": s.notes, "charts": s.charts,
                   "tables": [t.view() for t in s.tables]} for s in sections],
        browser=browser, data_json=json_script(data) if data is not None else None,
    )


def write(path: Path, text: str) -> Path:
    """Write the page atomically (a reader never sees half a report)."""
    return write_text(path, text)
