"""The report's per-category bar charts (medvl.evaluation.report)."""

from __future__ import annotations

import math


def test_a_category_without_a_metric_gets_no_bar_rather_than_a_zero(tmp_path, monkeypatch):
    import matplotlib.axes

    from medvl.evaluation.report import plot_families

    drawn: dict[str, list[float]] = {}
    real_bar = matplotlib.axes.Axes.bar

    def spy(self, x, heights, *args, label=None, **kwargs):
        drawn[label] = list(heights)
        return real_bar(self, x, heights, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    tables = {"by_category": {"closed_presence": {"count": 2, "exact_match": 0.0, "perplexity": 3.0},
                              "open_anatomy": {"count": 1, "exact_match": 0.5}}}
    paths = plot_families(tables, tmp_path)
    assert drawn["exact_match"] == [0.0, 0.5]  # a real zero stays a bar at 0
    assert drawn["perplexity"][0] == 3.0 and math.isnan(drawn["perplexity"][1])
    assert all(p.is_file() for p in paths)
