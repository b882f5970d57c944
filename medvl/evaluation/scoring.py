"""One scoring path: prediction records in, per-sample metrics and aggregated tables out.

``medvl.eval`` (:mod:`medvl.evaluation.run`) and training-time validation
(:mod:`medvl.training.callbacks`) both build their records with :func:`prediction_record` and score
them with :func:`score`, so a validation value and the same run's ``metrics.json`` come from the same
code. Which ``meta`` keys get a breakdown table is the dataset's own config (``conf/data/<name>.yaml``:
``breakdowns`` and ``multi_label``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medvl.data.format import answer_of, question_of
from medvl.data.taxonomy import CLOSED, OPEN, declared_taxonomy
from medvl.evaluation.aggregate import TAXONOMY_KEY, UNCATEGORIZED, aggregate, row_answer_type, row_language
from medvl.evaluation.extract import extract_choice
from medvl.evaluation.metrics import choice_accuracy, compute_metrics, make_corpus_fn, nll_per_token
from medvl.evaluation.perplexity import corpus_perplexity, perplexity

#: A group's values computed from its rows' reference-answer NLL (:func:`finish_group`), not from the
#: generated text: they exist only when the NLL is scored (``perplexity=true``, or a validation asking for them).
LIKELIHOOD_METRICS = ("perplexity", "perplexity_median")


def likelihood_fields(nll: float | None, n_tokens: int) -> dict[str, Any]:
    """A record's ``nll``/``n_tokens``/``perplexity`` for a reference answer's summed NLL (None: not scored)."""
    return {"nll": nll, "n_tokens": n_tokens, "perplexity": perplexity(nll, n_tokens) if nll is not None else None}


def prediction_record(row: dict[str, Any], prediction: str, nll: float | None = None,
                      n_tokens: int = 0) -> dict[str, Any]:
    """One answered row as ``predictions.jsonl`` holds it and :func:`score` reads it."""
    return {"id": row["id"], "question": question_of(row), "reference": answer_of(row), "prediction": prediction,
            "category": row.get("category"), "answer_type": row.get("answer_type"), "meta": row.get("meta", {}),
            **likelihood_fields(nll, n_tokens)}


def breakdown_labels(value: object, multi_label: bool = False) -> list[str]:
    """The breakdown groups a row's ``meta[key]`` puts it in (none for a missing or empty value).

    ``multi_label``: the value can list several labels (VQA-RAD's ``"ABN, POS"``), and the row counts under each.
    """
    if value in (None, ""):
        return []
    if multi_label:
        return list(dict.fromkeys(label.strip() for label in str(value).split(",") if label.strip()))
    return [str(value)]


def score(records: list[dict[str, Any]], cfg: DictConfig, breakdowns: Sequence[str] = (),
          multi_label: Collection[str] = ()) -> dict[str, Any]:
    """Per-sample metrics into ``records`` (``rec["metrics"]``) and the aggregated tables.

    Args:
        cfg: ``metrics`` (names; empty: all), ``bertscore`` settings and, where it has them, ``data.categories``
            (the dataset's own taxonomy: its order and answer types; metrics.json records it as ``taxonomy``).
        breakdowns: ``meta`` keys that each get a ``by_<key>`` table (the data config's ``breakdowns``).
        multi_label: those of them whose value can list several labels (the data config's ``multi_label``).
    """
    preds = [r["prediction"] for r in records]
    refs = [r["reference"] for r in records]
    names = list(cfg.metrics) or None
    languages = [row_language(r) for r in records]
    # Multiple choice: closed_accuracy and substring_match read the option letter (see compute_metrics's options).
    options = [(r.get("meta") or {}).get("options") or None for r in records]
    notes: dict[str, str] = {}
    taxonomy = declared_taxonomy(OmegaConf.select(cfg, "data.categories", default=None))
    # The answer type the tables group rows by, so that closed_accuracy is scored on the "closed" rows.
    answer_types = [row_answer_type(r, categories=taxonomy) for r in records]
    per_sample, _ = compute_metrics(preds, refs, answer_types, metrics=names,
                                    bertscore_model=cfg.bertscore.model,
                                    bertscore_num_layers=cfg.bertscore.num_layers,
                                    bertscore_dtype=cfg.bertscore.dtype,
                                    bertscore_model_zh=OmegaConf.select(cfg, "bertscore.model_zh", default=None),
                                    languages=languages, options=options, notes=notes)
    for rec, scores, row_options in zip(records, per_sample, options):
        if row_options:
            # Multiple choice: the letter is extracted first, then compared (strict exact match stays too).
            rec["extracted_choice"] = extract_choice(rec["prediction"], row_options)
            scores["choice_accuracy"] = choice_accuracy(rec)
        if rec.get("perplexity") is not None:
            scores["nll_per_token"] = nll_per_token(rec)
        rec["metrics"] = scores
    corpus_fn = make_corpus_fn(preds, refs, metrics=names)
    tables = aggregate(records, [r["metrics"] for r in records], corpus_fn, taxonomy)
    for group_rows, group in _groups(records, tables, answer_types):
        finish_group(group, group_rows)
    if taxonomy is not None:  # report.py and medvl.compare read the names' answer types from metrics.json
        tables[TAXONOMY_KEY] = taxonomy
    for key in breakdowns:
        by_value: dict[str, list[int]] = {}
        for i, rec in enumerate(records):
            for label in breakdown_labels((rec.get("meta") or {}).get(key), key in multi_label):
                by_value.setdefault(label, []).append(i)
        if by_value:
            # The same numbers as a category's: corpus BLEU/CIDEr/METEOR on the group's rows, corpus perplexity.
            tables[f"by_{key}"] = {v: _breakdown(records, by_value[v], corpus_fn) for v in sorted(by_value)}
    if len(set(languages)) > 1:  # en and zh (Slake data.lang=all) are also reported apart
        tables["by_lang"] = {lang: _breakdown(records, [i for i, x in enumerate(languages) if x == lang], corpus_fn)
                             for lang in sorted(set(languages))}
    if notes:
        tables["notes"] = notes  # why a metric is missing from some groups (metrics.json, tables.md, console)
    return tables


def _breakdown(records: list[dict[str, Any]], indices: list[int],
               corpus_fn: Callable[[Sequence[int]], dict[str, float]]) -> dict[str, Any]:
    rows = [records[i] for i in indices]
    group = aggregate(rows, [r["metrics"] for r in rows], lambda sub: corpus_fn([indices[j] for j in sub]))["overall"]
    finish_group(group, rows)
    return group


def finish_group(group: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Corpus perplexity of the group (only when every row has its NLL) in place of the per-token mean."""
    group.pop("nll_per_token", None)
    pairs = [(r["nll"], r["n_tokens"]) for r in rows if r.get("nll") is not None]
    if pairs and len(pairs) == len(rows):
        group.update(corpus_perplexity(pairs))


def _groups(records: list[dict[str, Any]], tables: dict[str, Any], answer_types: list[str | None]):
    """(rows, table) of overall, closed, open and each category, as :func:`aggregate` grouped them."""
    yield records, tables["overall"]
    yield [r for r, t in zip(records, answer_types) if t == CLOSED], tables["closed"]
    yield [r for r, t in zip(records, answer_types) if t == OPEN], tables["open"]
    for cat, group in tables["by_category"].items():
        yield [r for r in records if (r.get("category") or UNCATEGORIZED) == cat], group
