"""``medvl.prepare``'s report: the counts of each split, ``report.json``, ``categories.md``, the console table."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medvl.data.converters import FILTER_REASONS, Row
from medvl.data.taxonomy import BUILTIN

#: Row ``meta`` keys that hold a dataset's own labels; copied into type_mapping.json.
SOURCE_LABEL_KEYS = ("answer_type", "content_type", "question_type", "task", "label",
                     "heuristic_answer_type", "heuristic_question_type")

def token_stats(lengths: list[int]) -> dict[str, float | int]:
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)
    return {"count": len(ordered), "min": ordered[0], "mean": round(statistics.fmean(ordered), 1),
            "p50": ordered[len(ordered) // 2], "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max": ordered[-1]}


def type_entry(row: Row, split: str) -> dict[str, Any]:
    meta = row.get("meta") or {}
    return {"split": split, "category": row.get("category"), "answer_type": row.get("answer_type"),
            "source": row.get("source"), "labels": {k: meta[k] for k in SOURCE_LABEL_KEYS if k in meta},
            "rule": meta.get("category_rule")}


def category_table(counts: dict[str, Counter], taxonomy: Mapping[str, str] | None = None) -> str:
    """Markdown table: one line per category of ``taxonomy`` (``data.categories``; None: the built-in 12), one
    column per split."""
    import pandas as pd

    from medvl.tables import markdown

    splits = list(counts)
    rows = [[answer_type, f"`{cat}`", *(counts[s][cat] for s in splits)]
            for cat, answer_type in (BUILTIN if taxonomy is None else taxonomy).items()]
    if any(counts[s][None] for s in splits):
        rows.append(["-", "(none)", *(counts[s][None] for s in splits)])
    rows.append(["", "**total**", *(sum(counts[s].values()) for s in splits)])
    frame = pd.DataFrame(rows, columns=["answer type", "category", *splits])
    return markdown(frame, right=splits) + "\n"


class SplitResult:
    """Counts of one split while its verdicts are written out."""

    def __init__(self, split: str):
        self.split = split
        self.input = self.kept = 0
        self.by_reason: Counter = Counter()
        self.lengths: list[int] = []
        self.categories: Counter = Counter()
        #: (id, n_tokens) of evaluation rows kept although longer than max_length.
        self.long_kept: list[tuple[Any, int]] = []

    def summary(self) -> dict[str, Any]:
        rejected = sum(self.by_reason.values())
        assert self.kept + rejected == self.input, "kept + rejected must equal the rows read"
        return {"input": self.input, "kept": self.kept, "rejected": rejected,
                "filtered": sum(n for r, n in self.by_reason.items() if r in FILTER_REASONS),
                "by_reason": dict(sorted(self.by_reason.items())), "tokens": token_stats(self.lengths),
                "kept_over_max_length": {"count": len(self.long_kept),
                                         "ids": [row_id for row_id, _ in self.long_kept[:LONG_IDS_LISTED]]}}


#: Ids of long evaluation rows listed in report.json (all are counted).
LONG_IDS_LISTED = 20


def build_report(cfg: Any, spec: Any, options: dict[str, Any], splits: dict[str, dict[str, Any]],
                 lengths: list[int], *, length_rule: str, max_image_tokens: int, seconds: dict[str, float],
                 kept_over: list[str]) -> dict[str, Any]:
    """``report.json``: what was read and kept per split and in total, and what lengths were measured with."""
    data = cfg.data
    n_input = sum(s["input"] for s in splits.values())
    report = {
        "mode": "full" if cfg.full else "fast",
        # root absolute: medvl.train and medvl.eval find the images from data.dir alone (splits.resolve_image_root).
        "data": {"name": data.name, "format": data.format, "root": str(Path(spec.root).absolute()),
                 "dir": str(Path(data.dir)), "follow_symlinks": spec.follow_symlinks, **options},
        # What lengths were measured with: training with another model or budget re-checks its rows.
        "model": {"name": cfg.model.name, "path": spec.model_path, "min_pixels": spec.min_pixels,
                  "max_pixels": spec.max_pixels, "max_image_tokens": max_image_tokens},
        "max_length": spec.max_length,
        "max_length_rule": length_rule,
        "system_prompt": spec.system_prompt,
        "workers": int(cfg.workers),
        "splits": splits,
        "total": {"input": n_input, "kept": sum(s["kept"] for s in splits.values()),
                  "tokens": token_stats(lengths),
                  "rejected": sum(s["rejected"] for s in splits.values()),
                  "by_reason": dict(sorted(sum((Counter(s["by_reason"]) for s in splits.values()),
                                               Counter()).items()))},
        "seconds": seconds,
    }
    if kept_over:
        report["kept_from_previous_run"] = kept_over
    report["warnings"] = length_warnings(report, Path(data.dir))
    if cfg.model.build_tiny:  # the default model: lengths of a real model's run will differ
        report["warnings"].append(f"lengths were measured with model={cfg.model.name} ({max_image_tokens} "
                                  f"image tokens at most); add model=<the model you will train, e.g. 7b> to count "
                                  f"its drops here (training with another model re-measures at start-up)")
    return report


def length_warnings(report: dict[str, Any], out_dir: Path) -> list[str]:
    """One line per split whose rows' length mattered: training rows dropped, evaluation rows kept."""
    lines = []
    for split, s in report["splits"].items():
        dropped = s["by_reason"].get("too_long", 0)
        if dropped:
            lines.append(f"{split}: {dropped} of {s['input']} rows dropped as too_long (longer than max_length="
                         f"{report['max_length']}, {report['max_length_rule']}); each is in "
                         f"{out_dir / 'rejects.jsonl'}; raise data.max_length (or data.text_tokens) to keep them")
        long_kept = (s.get("kept_over_max_length") or {}).get("count", 0)
        if long_kept:
            lines.append(f"{split}: {long_kept} rows longer than max_length={report['max_length']} kept (an "
                         f"evaluation split is never cut; generation and perplexity read them whole); ids in "
                         f"report.json")
    return lines


def summary_table(report: dict[str, Any]):
    """One line per split: rows read, kept, rejected by reason, and token lengths of the kept rows."""
    import pandas as pd

    from medvl.tables import rich_table

    reasons = list(report["total"]["by_reason"])
    rows = []
    for split, s in [*report["splits"].items(), ("total", report["total"])]:
        tokens = s.get("tokens", {})
        span = f"{tokens['p50']}/{tokens['p95']}/{tokens['max']}" if tokens.get("count") else "-"
        rows.append([split, s["input"], s["kept"], s["rejected"], *(s["by_reason"].get(r, 0) for r in reasons), span])
    columns = ["split", "input", "kept", "rejected", *reasons, "tokens p50/p95/max"]
    return rich_table(pd.DataFrame(rows, columns=columns, dtype=object), right=columns[1:],
                      title=f"medvl.prepare {report['data']['name']} ({report['mode']}, max_length "
                            f"{report['max_length']})")
