"""medvl.tables: tidy records pivoted in first-seen order, bold-best by the metric registry's direction,
and the Markdown, CSV and console renderings of one frame. Every expected value is worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medvl import tables
from medvl.evaluation.compare import metric_directions


def _records() -> pd.DataFrame:
    # Runs in the order B, A, C (not sorted), metrics word_f1 before exact_match.
    values = {
        ("B", "word_f1"): 0.4, ("A", "word_f1"): 0.4, ("C", "word_f1"): 0.4,  # all equal: nobody is best
        ("B", "exact_match"): 0.7, ("A", "exact_match"): 0.5, ("C", "exact_match"): 0.7,  # tie: B and C
        ("B", "perplexity"): 3.25, ("A", "perplexity"): 12.5, ("C", "perplexity"): None,  # lower is better: B
    }
    return tables.records_frame(
        {"run": run, "breakdown": "overall", "group": "overall", "metric": metric, "value": value, "count": 10}
        for (run, metric), value in values.items()
    )


def test_pivot_keeps_first_seen_order_and_none() -> None:
    wide = tables.pivot(_records(), ["metric"])
    assert list(wide.columns) == ["B", "A", "C"]
    assert list(wide.index) == ["word_f1", "exact_match", "perplexity"]
    assert wide.loc["perplexity", "C"] is None
    assert wide.loc["exact_match", "A"] == 0.5
    reordered = tables.pivot(_records(), ["metric"], row_order=["perplexity", "bleu4"], column_order=["A", "D"])
    assert reordered.to_dict("index") == {"perplexity": {"A": 12.5, "D": None}, "bleu4": {"A": None, "D": None}}


def test_bold_best_follows_the_registry_direction() -> None:
    wide = tables.pivot(_records(), ["metric"])
    directions = metric_directions(list(wide.index))
    assert directions == {"word_f1": True, "exact_match": True, "perplexity": False}
    best = tables.best_mask(wide, [directions[m] for m in wide.index])
    assert best.to_dict("index") == {
        "word_f1": {"B": False, "A": False, "C": False},
        "exact_match": {"B": True, "A": False, "C": True},
        "perplexity": {"B": True, "A": False, "C": False},
    }
    cells = wide.map(lambda v: tables.format_number(v, missing="—"))
    cells = cells.mask(best, cells.map(tables.bold)).rename_axis("Metric").reset_index()
    assert tables.markdown(cells, right=["B", "A", "C"]) == "\n".join([
        "| Metric | B | A | C |",
        "|---|---:|---:|---:|",
        "| word_f1 | 0.4000 | 0.4000 | 0.4000 |",
        "| exact_match | **0.7000** | 0.5000 | **0.7000** |",
        "| perplexity | **3.2500** | 12.5000 | — |",
    ])


def test_best_of_ties_all_equal_and_single_values() -> None:
    assert tables.best_of([0.5, 0.5, 0.1], True) == [True, True, False]
    assert tables.best_of([0.0, 0.0], True) == [False, False]  # nobody is best when all are equal
    assert tables.best_of([0.3, None], True) == [False, False]  # one value is no comparison
    assert tables.best_of([2.0, 1.0, None], False) == [False, True, False]


def test_markdown_escapes_cells_and_writes_a_table_without_rows() -> None:
    frame = pd.DataFrame([["MRI|T2", "two\nlines"]], columns=["Modality", "n"])
    assert tables.markdown(frame, right=["n"]) == "| Modality | n |\n|---|---:|\n| MRI\\|T2 | two lines |"
    assert tables.markdown(pd.DataFrame(columns=["a", "b"])) == "| a | b |\n|---|---|"


def test_csv_keeps_ints_full_floats_and_empty_none(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    tables.write_csv(_records().head(3).assign(value=[1 / 3, None, 2.0]), path)
    assert path.read_bytes() == (
        b"run,breakdown,group,metric,value,count\r\n"
        b"B,overall,overall,word_f1,0.3333333333333333,10\r\n"
        b"A,overall,overall,word_f1,,10\r\n"
        b"C,overall,overall,word_f1,2.0,10\r\n"
    )


@pytest.mark.parametrize(("value", "kwargs", "text"), [
    (None, {}, "-"),
    (None, {"missing": "—"}, "—"),
    (0.12345, {}, "0.1235"),
    (151936.2, {}, "1.519e+05"),  # a tiny model's perplexity
    (151936.2, {"compact_from": None}, "151936.2000"),
    (42, {}, "42"),
])
def test_format_number(value, kwargs, text) -> None:
    assert tables.format_number(value, **kwargs) == text


def test_rich_table_reads_no_markup_and_bolds_marked_cells() -> None:
    from rich.console import Console

    frame = pd.DataFrame([["[red]x[/red]", "0.5"], ["y", "0.7"]], columns=["run", "exact_match"])
    bold = pd.DataFrame([[False, False], [False, True]], columns=frame.columns)
    title = "3_lora.targets=[q_proj,v_proj]"  # a sweep job's folder, as the tables of its evaluation say
    table = tables.rich_table(frame, title=title, right=["exact_match"], bold_cells=bold)
    console = Console(width=80, record=True, force_terminal=False)
    console.print(table)
    text = console.export_text()
    assert "[red]x[/red]" in text and title in text
    assert table.columns[1].justify == "right"
    assert [str(cell.style) for cell in table.columns[1].cells] == ["", "bold"]
