"""Tables: data first, formatting second.

A table starts as tidy records, one row per (run, breakdown, group, metric) with its ``value`` and the
group's row count ``count`` (:data:`RECORD_COLUMNS`), in a pandas DataFrame. :func:`pivot` turns them wide in
first-seen order; :func:`best_mask` marks each row's best cell from a direction per row; the renderers
(:func:`markdown`, :func:`write_csv`, :func:`rich_table`) show a frame of cells formatted by
:func:`format_number` and :func:`format_ci`. Evaluation's reports, ``medvl.compare``, sweep summaries and
``medvl.prepare`` all write through here.

This module knows no metric: callers pass the direction (the metric registry's ``higher_is_better``), so
it sits at the bottom of the package with ``config`` and every layer may use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

#: The columns of a tidy record; ``breakdown`` is the table a group belongs to (``overall``, ``answer_type``,
#: ``category``, ``task``, ...), ``count`` the group's number of rows (as metrics.json calls it).
RECORD_COLUMNS = ("run", "breakdown", "group", "metric", "value", "count")
#: What a missing value looks like in Markdown and on the console.
MISSING = "-"


def records_frame(records: Iterable[Mapping[str, Any]], columns: Sequence[str] = RECORD_COLUMNS) -> pd.DataFrame:
    """Records as a DataFrame of Python objects: None stays None and an int stays an int (the CSV shows
    ``3``, not ``3.0``, and no float is rounded on the way)."""
    return pd.DataFrame([dict(r) for r in records], columns=list(columns), dtype=object)


def pivot(
    frame: pd.DataFrame,
    index: Sequence[str],
    columns: str = "run",
    values: str = "value",
    *,
    row_order: Sequence[Any] | None = None,
    column_order: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """Wide ``frame``: one row per ``index`` key, one column per ``columns`` value, a missing cell None.

    Rows and columns come in ``row_order`` and ``column_order`` (keys absent from ``frame`` give rows or
    columns of None), by default in first-seen order: pandas alone would sort them.
    """
    index = list(index)
    if row_order is None:
        keys = frame[index].drop_duplicates()
        row_order = list(keys.itertuples(index=False, name=None)) if len(index) > 1 else list(keys[index[0]])
    rows = (pd.MultiIndex.from_tuples(list(row_order), names=index) if len(index) > 1
            else pd.Index(list(row_order), name=index[0], dtype=object))
    order = list(pd.unique(frame[columns])) if column_order is None else list(column_order)
    if frame.empty:
        wide = pd.DataFrame(index=rows, columns=order, dtype=object)
    else:
        wide = frame.pivot(index=index, columns=columns, values=values).reindex(index=rows, columns=order)
    wide.columns.name = None
    return wide.astype(object).where(wide.notna(), None)


def best_of(values: Sequence[float | None], higher_is_better: bool) -> list[bool]:
    """Which values are the best (all of them on a tie); none when fewer than two values differ.

    >>> best_of([0.5, 0.7, None], higher_is_better=True)
    [False, True, False]
    >>> best_of([3.0, 2.0], higher_is_better=False)
    [False, True]
    >>> best_of([0.0, 0.0], higher_is_better=True)
    [False, False]
    """
    present = [v for v in values if v is not None]
    if len(present) < 2 or len(set(present)) == 1:
        return [False] * len(values)
    best = max(present) if higher_is_better else min(present)
    return [v is not None and math.isclose(v, best, rel_tol=1e-12, abs_tol=0.0) for v in values]


def best_mask(wide: pd.DataFrame, higher_is_better: Sequence[bool]) -> pd.DataFrame:
    """True where a cell of ``wide`` holds its row's best value (:func:`best_of`); ``higher_is_better``
    has one direction per row."""
    if len(higher_is_better) != len(wide):
        raise ValueError(f"{len(wide)} rows but {len(higher_is_better)} directions")
    rows = [best_of([None if v is None else float(v) for v in row], bool(higher))
            for row, higher in zip(wide.itertuples(index=False), higher_is_better)]
    return pd.DataFrame(rows, index=wide.index, columns=wide.columns, dtype=bool)


def format_number(value: Any, *, missing: str = MISSING, compact_from: float | None = 1e5) -> str:
    """A table cell: floats with 4 decimals (``.4g`` from ``compact_from`` on, e.g. a tiny model's
    perplexity), ``missing`` for None, anything else as ``str``."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.4g}" if compact_from is not None and abs(value) >= compact_from else f"{value:.4f}"
    return str(value)


def format_p(p: float) -> str:
    """A p-value: 4 decimals, scientific below 1e-4 (where 4 decimals would read 0.0000)."""
    return f"{p:.2e}" if p < 1e-4 else f"{p:.4f}"


def format_ci(low: float, high: float) -> str:
    """A confidence interval of a difference: ``[-0.0123, +0.0456]``."""
    return f"[{low:+.4f}, {high:+.4f}]"


def bold(text: str) -> str:
    return f"**{text}**"


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): a value a table can show and compare."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def cell(text: Any) -> str:
    """Text safe inside a Markdown table cell: a "|" would end the cell and a newline the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _pipe_format(right: Sequence[bool]) -> Any:
    """tabulate's ``pipe`` format without padding: cells are written as they are, so tables medvl wrote
    before it used pandas stay byte-identical (and diffs between runs stay small)."""
    from tabulate import DataRow, TableFormat

    row = DataRow("|", "|", "|")
    separator = "|" + "|".join("---:" if r else "---" for r in right) + "|"
    return TableFormat(lineabove=None, linebelowheader=lambda widths, aligns: separator, linebetweenrows=None,
                       linebelow=None, headerrow=row, datarow=row, padding=1, with_header_hide=None)


def markdown(frame: pd.DataFrame, *, right: Iterable[str] = ()) -> str:
    """A Markdown pipe table of ``frame`` (index not shown), no trailing newline.

    Cells are shown as text (format numbers first); ``right`` names the columns aligned right (``---:``).
    """
    right = set(right)
    cells = frame.map(cell)
    cells.columns = [cell(c) for c in frame.columns]
    aligns = [c in right for c in frame.columns]
    if cells.empty:  # tabulate pads the header of a table without rows
        return "\n".join(["| " + " | ".join(cells.columns) + " |", _pipe_format(aligns).linebelowheader(None, None)])
    return cells.to_markdown(index=False, tablefmt=_pipe_format(aligns), disable_numparse=True,
                             colalign=[None] * len(aligns))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file; a stopped run leaves the old one)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """``frame`` as CSV (index not written; None as an empty field; rows end in ``\\r\\n`` as the csv
    module's do, so files written before pandas stay byte-identical)."""
    frame.to_csv(Path(path), index=False, na_rep="", lineterminator="\r\n", encoding="utf-8")


def console():
    """A rich console; when output goes to a log or a pipe, wide enough for the metric tables.

    (rich falls back to 80 columns there, which cut every number to ``0.…``.)
    """
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 200))


def rich_table(
    frame: pd.DataFrame,
    *,
    title: str | None = None,
    right: Iterable[str] = (),
    bold_cells: pd.DataFrame | None = None,
    section_by: str | None = None,
) -> Any:
    """A rich Table of ``frame``'s cells (no markup is read from them: a ``[`` in a run name stays).

    ``bold_cells`` (a boolean frame like ``frame``) marks cells to show in bold; ``section_by`` names a
    column whose change of value starts a new section. A cell that already is a rich ``Text`` (a note
    in colour) is shown as it is.
    """
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    right = set(right)
    table = Table(title=escape(title) if title else title)  # a sweep job's name holds [...]: text, not markup
    for column in frame.columns:
        table.add_column(Text(str(column)), justify="right" if column in right else "left")
    sections = list(frame[section_by]) if section_by is not None else [None] * len(frame)
    for position, row in enumerate(frame.itertuples(index=False)):
        if position and sections[position] != sections[position - 1]:
            table.add_section()
        cells = []
        for column, value in enumerate(row):
            strong = bold_cells is not None and bool(bold_cells.iat[position, column])
            cells.append(value if isinstance(value, Text) else Text(str(value), style="bold" if strong else ""))
        table.add_row(*cells)
    return table
