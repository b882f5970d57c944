"""report.html: one offline page of an evaluation (tables, charts with CIs, a predictions browser), of
``compare_base=true`` (two predictions side by side) and of ``medvl.compare`` (model_comparison.html).

The fast tests read the HTML as text; the browser tests open it in Debian's Chromium through Selenium and
chromedriver (``apt-get install -y chromium chromium-driver``; .ci/run installs them). Without them those tests
fail with the reason, unless ``MEDVL_SKIP_BROWSER=1`` says to skip them.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageStat

from medvl.config import dataset_labels
from medvl.evaluation import html
from medvl.evaluation.charts import BOOTSTRAP, INTERVALS_NOTE, WILSON, family_charts, interval, wilson
from medvl.evaluation.compare import compare
from medvl.evaluation.report import FAMILIES, print_side_by_side, write_reports
from medvl.evaluation.scoring import score
from medvl.tables import format_number

HOSTILE = 'Is the <b>mass</b> left? </script><script>alert("x")</script> & more'
METRICS = ["exact_match", "closed_accuracy", "open_recall", "word_f1"]


def _images(root: Path, n: int) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        image = Image.new("RGB", (64, 64), (30 * (i % 8), 90, 160))
        ImageDraw.Draw(image).ellipse((8 + i % 5, 8, 40, 40 + i % 7), fill=(240, 240, 240))
        path = root / f"img{i}.png"
        image.save(path)
        out[f"r{i}"] = path
    return out


def _records(predictions: dict[int, str] | None = None) -> list[dict]:
    """Ten rows: yes/no (closed), anatomy (open: every answer wrong, a true 0) and location (closed)."""
    rows = [("closed_yes_no", "CLOSED", "yes", "yes"), ("closed_yes_no", "CLOSED", "no", "yes"),
            ("closed_yes_no", "CLOSED", "yes", "yes"), ("closed_yes_no", "CLOSED", "no", "no"),
            ("open_anatomy", "OPEN", "liver", "spleen"), ("open_anatomy", "OPEN", "left lung", "heart"),
            ("open_anatomy", "OPEN", "brain", "kidney"), ("closed_location", "CLOSED", "left", "left"),
            ("closed_location", "CLOSED", "right", "right"), ("closed_location", "CLOSED", "left", "right")]
    records = []
    for i, (category, answer_type, reference, prediction) in enumerate(rows):
        records.append({"id": f"r{i}", "question": HOSTILE if i == 1 else f"question {i}?", "reference": reference,
                        "prediction": (predictions or {}).get(i, prediction), "category": category,
                        "answer_type": answer_type, "meta": {"modality": "CT" if i % 2 else "MRI"},
                        "nll": None, "n_tokens": 0, "perplexity": None})
    return records


def _scored(records: list[dict]) -> dict:
    cfg = OmegaConf.create({"metrics": METRICS, "bertscore": {"model": None, "num_layers": None, "dtype": "float32"}})
    tables = score(records, cfg, **dataset_labels("synth"))
    tables["run"] = {"name": "tiny-run", "ckpt": None, "model": "tiny", "data": "synth", "split": "test",
                     "prompt": "default"}
    return tables


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    """An eval directory as ``medvl.eval`` writes it, from hand-made predictions (no model)."""
    out = tmp_path_factory.mktemp("eval")
    records = _records()
    write_reports(records, _scored(records), out, images=_images(out.parent / "images", len(records)))
    return out


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory) -> Path:
    """``compare_base=true``'s layout: base/ and ckpt/ under one directory, and its report.html."""
    out = tmp_path_factory.mktemp("pair")
    images = _images(out.parent / "pair-images", 10)
    results = {}
    for name, sub, predictions in (("base", "base", {0: "maybe", 7: "up"}), ("fine-tuned", "ckpt", None)):
        records = _records(predictions)
        tables = _scored(records)
        tables["run"]["name"] = name
        (out / sub).mkdir()
        write_reports(records, tables, out / sub, images=images)
        results[sub] = tables
    print_side_by_side(results, out, images=images)
    return out


def _page(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# --- without a browser -------------------------------------------------------------------------------------------

def test_every_text_is_escaped_and_embedded_json_cannot_end_its_script(eval_dir) -> None:
    page = _page(eval_dir / html.REPORT)
    assert "<b>mass</b>" not in page and '<script>alert("x")' not in page
    assert "Is the &lt;b&gt;mass&lt;/b&gt; left? &lt;/script&gt;&lt;script&gt;alert(" in page
    garbled = html.render("t", browser=html.build_browser({"run": [{"id": "x", "question": "a\x00b\x1bc",
                                                                     "prediction": "d\x07"}]}))
    assert "a\ufffdb\ufffdc" in garbled and "d\ufffd" in garbled and "\x00" not in garbled
    data = html.json_script({"q": HOSTILE, "nan": math.nan})
    assert "</" not in data and "<" not in data
    assert json.loads(data) == {"q": HOSTILE, "nan": None}


def test_the_page_asks_for_nothing_outside_itself(eval_dir) -> None:
    page = _page(eval_dir / html.REPORT)
    assert "default-src 'none'" in page  # the Content-Security-Policy refuses any request the page might make
    assert not re.findall(r"(?:src|href)=\"(?!data:image/jpeg;base64,|#)", page)
    assert "http://" not in page and "https://" not in page
    assert page.count('src="data:image/jpeg;base64,') == 10  # every row's thumbnail, inline


def test_capped_rows_and_thumbnails_are_said_on_the_page(tmp_path) -> None:
    records = _records()
    _scored(records)
    browser = html.build_browser({"run": records}, _images(tmp_path, 10), max_rows=4, max_thumbnails=2)
    assert len(browser.rows) == 4 and browser.total == 10
    assert [row.thumbnail is not None for row in browser.rows] == [True, True, False, False]
    assert browser.rows[2].image.endswith(".png")  # a row past the cap shows its image's path
    page = html.render("capped", browser=browser)
    assert "Showing the first 4 of 10 rows" in page and "Thumbnails for the first 2 of 4 rows" in page
    assert "No thumbnails" in html.render("no images", browser=html.build_browser({"run": records}))


def test_wrong_answers_come_first_by_the_row_s_own_correctness() -> None:
    records = _records()
    _scored(records)
    rows = html.build_browser({"run": records}).rows
    marks = [row.answers[0].correct for row in rows]
    assert marks == sorted(marks, key=lambda c: c is not False)  # every wrong row before any other
    assert [row.id for row in rows[:5]] == ["r1", "r4", "r5", "r6", "r9"]  # the file's order within
    # closed_accuracy decides a closed row, exact_match an open one
    assert html.correct({"metrics": {"exact_match": 0.0, "closed_accuracy": 1.0}}) is True
    assert html.correct({"metrics": {"exact_match": 1.0, "open_recall": 0.5}}) is True
    assert html.correct({"metrics": {"word_f1": 0.5}}) is None


def test_a_metric_that_does_not_apply_is_n_a_and_a_true_zero_has_a_bar() -> None:
    records = _records()
    tables = _scored(records)
    (matching,) = [c for c in family_charts(tables, FAMILIES, records) if c.family == "matching"]
    anatomy = matching.categories.index("open_anatomy")
    assert matching.values["closed_accuracy"][anatomy] is None  # closed accuracy on open rows: n/a
    assert matching.values["exact_match"][anatomy] == 0.0  # every anatomy answer wrong: a real 0
    svg = html.chart_svg(matching)
    assert re.search(r'<text class="na" data-category="open_anatomy" data-metric="closed_accuracy"[^>]*>n/a', svg)
    zero = re.search(r'<rect class="bar zero" data-category="open_anatomy" data-metric="exact_match"[^>]*'
                     r'height="([0-9.]+)"', svg)
    assert zero and float(zero.group(1)) >= 2
    assert "closed_yes_no (n=4)" in svg and "open_anatomy (n=3)" in svg


def test_png_charts_mark_n_a_draw_zeros_and_show_n_and_error_bars(tmp_path, monkeypatch) -> None:
    import matplotlib.axes

    from medvl.evaluation.report import plot_families

    calls: dict[str, list] = {"text": [], "hlines": [], "errorbar": [], "ticks": []}
    for name in ("text", "hlines", "errorbar"):
        real = getattr(matplotlib.axes.Axes, name)
        monkeypatch.setattr(matplotlib.axes.Axes, name,
                            lambda self, *a, _real=real, _name=name, **k: calls[_name].append(a) or _real(self, *a, **k))
    real_ticks = matplotlib.axes.Axes.set_xticks
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks",
                        lambda self, ticks, labels=None, **k: calls["ticks"].append(labels)
                        or real_ticks(self, ticks, labels, **k))
    records = _records()
    tables = _scored(records)
    plot_families(tables, tmp_path, records)
    assert any(a[2] == "n/a" for a in calls["text"])
    assert calls["hlines"]  # the zero of exact_match on open_anatomy
    assert calls["errorbar"]
    assert "open_anatomy\nn=3" in calls["ticks"][0]


def test_intervals_wilson_for_proportions_bootstrap_for_means_none_for_corpus_values() -> None:
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)  # the textbook value
    assert interval([1.0, 0.0, 1.0, 1.0], 0.75).method == WILSON
    spread = interval([0.2, 0.5, 0.9, 0.4], 0.5)
    assert spread.method == BOOTSTRAP and spread.low < 0.5 < spread.high
    assert interval([0.2, 0.5, 0.9, 0.4], 0.61) is None  # not their mean: a corpus statistic, no CI
    assert "Wilson" in INTERVALS_NOTE and "bootstrap" in INTERVALS_NOTE  # the charts say which


def test_tables_show_the_numbers_of_tables_md(eval_dir) -> None:
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    page = _page(eval_dir / html.REPORT)
    for group in ("overall", "closed", "open"):
        for metric in ("exact_match", "word_f1"):
            assert f">{format_number(metrics[group][metric])}<" in page
    assert 'id="table-modality"' in page  # the dataset's breakdown (synth: modality)
    assert page.count('<svg class="chart"') == 2  # matching and fine-grained: the families scored here


def test_compare_base_report_has_both_predictions_side_by_side(pair_dir) -> None:
    page = _page(pair_dir / html.REPORT)
    assert "<th>base</th><th>fine-tuned</th>" in page
    assert re.search(r'<tr class="prediction" data-category="closed_yes_no" data-wrong="2" data-right="0"', page)
    assert 'href="base/report.html"' in page and (pair_dir / "base" / html.REPORT).is_file()
    # exact_match, closed_accuracy and open_recall by category, a bar per run
    assert page.count('<svg class="chart"') == 3
    assert 'data-category="closed_location" data-metric="base"' in page
    assert (pair_dir / "ckpt" / html.REPORT).is_file()


def test_compare_writes_model_comparison_html_with_best_in_bold_and_cis(pair_dir, tmp_path) -> None:
    result = compare([pair_dir / "base", pair_dir / "ckpt"], out_dir=tmp_path / "cmp", n_boot=200)
    page = _page(result["paths"]["report"])
    assert result["paths"]["report"].name == "model_comparison.html"
    assert "<strong>" in page and "95% CI" in page and "percentile paired bootstrap" in page
    assert "No thumbnails" in page  # said, not silently left out
    assert page.count('<svg class="chart"') == 3 and "Wilson" in page


# --- in a browser ------------------------------------------------------------------------------------------------

def _require_browser() -> tuple[str, str]:
    """Chromium and chromedriver, or a failure naming what is missing (a skip only when asked for)."""
    if os.environ.get("MEDVL_SKIP_BROWSER") == "1":
        pytest.skip("MEDVL_SKIP_BROWSER=1")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[dev]' (or MEDVL_SKIP_BROWSER=1 to skip)", pytrace=False)
    if not chromium or not driver:
        pytest.fail("Chromium or chromedriver is missing: apt-get install -y chromium chromium-driver "
                    "(or MEDVL_SKIP_BROWSER=1 to skip)", pytrace=False)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1600"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _open(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    driver.get_log("browser")  # what an earlier page left


def _errors(driver) -> list:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _visible(driver) -> int:
    return driver.execute_script(
        "return document.querySelectorAll('#predictions-table tbody tr.prediction:not([hidden])').length")


def test_in_chromium_the_report_loads_shows_metrics_json_and_filters(browser, eval_dir) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get((eval_dir / html.REPORT).resolve().as_uri())
    assert _errors(browser) == []
    # No request left the page: resources other than data: URIs would be listed here.
    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    overall = browser.execute_script("""
        const out = {};
        const table = document.getElementById('table-overall');
        const groups = [...table.querySelectorAll('thead th')].map(th => th.textContent);
        for (const row of table.querySelectorAll('tbody tr')) {
          const cells = [...row.querySelectorAll('td')].map(td => td.textContent);
          groups.slice(1).forEach((g, i) => { out[cells[0] + '/' + g] = cells[i + 1]; });
        }
        return out;""")
    for metric, group in (("exact_match", "overall"), ("closed_accuracy", "closed"), ("word_f1", "open"),
                          ("open_recall", "open"), ("count", "closed")):
        assert overall[f"{metric}/{group}"] == format_number(metrics[group][metric])
    assert overall["closed_accuracy/open"] == "-"
    category = browser.find_element(By.ID, "table-category").text
    assert f"open_anatomy OPEN 3 {format_number(metrics['by_category']['open_anatomy']['exact_match'])}" in category
    assert browser.execute_script("return window.medvlData") == metrics
    # the charts are drawn: 3 categories x (exact_match, closed_accuracy, open_recall, word_f1), less 3 n/a
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")) == 9

    assert _visible(browser) == 10
    Select(browser.find_element(By.ID, "filter-category")).select_by_value("open_anatomy")
    assert _visible(browser) == 3
    Select(browser.find_element(By.ID, "filter-category")).select_by_value("")
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("wrong")
    assert _visible(browser) == 5
    assert browser.find_element(By.ID, "visible-count").text == "showing 5 of 10 rows"
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("right")
    assert _visible(browser) == 5

    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L")
    assert max(ImageStat.Stat(shot).stddev) > 20  # text, tables and charts, not a blank page
    assert _errors(browser) == []


def test_in_chromium_the_side_by_side_and_comparison_pages_load_and_filter(browser, pair_dir, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _open(browser, pair_dir / html.REPORT)
    assert _errors(browser) == []
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("disagree")
    assert _visible(browser) == 2  # r0 and r7: right after fine-tuning, wrong before
    result = compare([pair_dir / "base", pair_dir / "ckpt"], out_dir=tmp_path / "cmp", n_boot=200)
    _open(browser, result["paths"]["report"])
    assert _errors(browser) == []
    assert browser.find_elements(By.CSS_SELECTOR, "table.metrics strong")
