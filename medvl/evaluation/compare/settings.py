"""Whether runs can be compared: the same data and split, and the same generation and scoring settings.

Runs evaluated on different data are refused; runs evaluated with different :data:`STRICT_SETTINGS` are
refused unless ``--allow-mixed-settings``; every setting the runs do not share is marked in the outputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from medvl.evaluation.compare.runs import CompareError, Run
from medvl.evaluation.report import OVERALL


def check_same_data(runs: Sequence[Run]) -> None:
    """Refuse runs evaluated on different data or splits (as recorded in metrics.json ``run``), or on different
    prepared data of one dataset (eval_fingerprint.json's ``data`` directory: ``slake_en`` and ``slake_zh``).

    Side-by-side bold "best" values and paired tests are meaningless across datasets, and ids may
    coincide by accident (own LLaVA-format data numbered 0, 1, ...). Runs that do not record their
    data are not checked. The prepared directory is compared by its name, not its path: runs of one
    dataset on two machines (or in two sweeps) keep it in different places.

    Raises:
        CompareError: two runs name different ``data``, ``split`` or prepared data directory.
    """
    recorded = []  # (run, dataset, prepared directory's name or None, split or None)
    for run in runs:
        meta = run.metrics.get("run")
        if isinstance(meta, Mapping) and meta.get("data"):
            prepared = run.fingerprint.get("data")
            recorded.append((run.name, str(meta["data"]), PurePath(prepared).name if isinstance(prepared, str) else None,
                             str(meta["split"]) if meta.get("split") else None))
    differ = [{entry[i] for entry in recorded if entry[i] is not None} for i in (1, 2, 3)]
    if any(len(values) > 1 for values in differ):
        parts = ", ".join(f"{name}: {data}" + (f" ({prepared})" if prepared else "") + (f"/{split}" if split else "")
                          for name, data, prepared, split in recorded)
        raise CompareError(f"runs were evaluated on different data ({parts}); compare runs of one dataset and split")


#: Evaluation settings and where eval_fingerprint.json (``fingerprint``) or metrics.json (``run``) record
#: them, first found wins (older eval dirs kept max_new_tokens and system_prompt at the fingerprint's top).
SETTING_SOURCES: dict[str, tuple[tuple[str, ...], ...]] = {
    "max_new_tokens": (("fingerprint", "generation", "max_new_tokens"), ("fingerprint", "max_new_tokens")),
    "do_sample": (("fingerprint", "generation", "do_sample"),),
    "num_beams": (("fingerprint", "generation", "num_beams"),),
    "bertscore": (("fingerprint", "scoring", "bertscore"),),
    "prompt": (("fingerprint", "prompt", "name"), ("run", "prompt")),
    "system_prompt": (("fingerprint", "prompt", "system_prompt"), ("fingerprint", "system_prompt"),
                      ("run", "system_prompt")),
}


#: Settings under which the same model scores differently (answers cut at another length or decoded
#: otherwise, the same answers scored by another BERTScore model): a difference in the tables would measure
#: the settings, not the models. Refused unless ``allow_mixed_settings``, then marked. The other settings
#: (the prompt) are marked, never refused: the prompt is often what is compared (a prompt ablation, a sweep
#: over ``prompt=...``).
STRICT_SETTINGS = ("max_new_tokens", "do_sample", "num_beams", "bertscore")
NOT_RECORDED = "not recorded"
#: BERTScore keys later medvl versions add to the fingerprint (the layers the model was compared at): runs
#: evaluated before them do not record them, and are compared on the other keys.
RESOLVED_LATER = ("layer", "layer_zh")
#: The BERTScore settings of a run without BERTScore scores do not matter.
NOT_SCORED = "not scored"
_UNKNOWN = (NOT_RECORDED, NOT_SCORED)
_ABSENT = object()


def eval_settings(run: Run) -> dict[str, Any]:
    """``{setting: value}`` of :data:`SETTING_SOURCES` the run records (absent ones are left out)."""
    document = {"fingerprint": run.fingerprint, "run": run.metrics.get("run")}
    out = {}
    for setting, sources in SETTING_SOURCES.items():
        for path in sources:
            node: Any = document
            for key in path:
                node = node.get(key, _ABSENT) if isinstance(node, Mapping) else _ABSENT
            if node is not _ABSENT:
                out[setting] = node
                break
    overall = run.metrics.get(OVERALL)
    if not (isinstance(overall, Mapping) and "bertscore_f1" in overall):
        out["bertscore"] = NOT_SCORED
    return out


def _setting_text(value: Any) -> str:
    if value is _ABSENT:
        return NOT_RECORDED
    if isinstance(value, Mapping):
        # An option added later at its default (null) is the setting as it was before the option existed.
        value = {key: v for key, v in value.items() if v is not None}
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def differing_settings(runs: Sequence[Run]) -> dict[str, dict[str, str]]:
    """``{setting: {run name: value as text}}`` for each evaluation setting the runs do not share.

    A run that does not record a setting (an eval dir from an older medvl) shows ``not recorded``.
    """
    settings = [eval_settings(run) for run in runs]
    # BERTScore's resolved layers (RESOLVED_LATER) are compared only where every run records them.
    scored = [recorded["bertscore"] for recorded in settings if isinstance(recorded.get("bertscore"), Mapping)]
    for key in RESOLVED_LATER:
        if not all(key in setting for setting in scored):
            for recorded in settings:
                if isinstance(recorded.get("bertscore"), Mapping):
                    recorded["bertscore"] = {k: v for k, v in recorded["bertscore"].items() if k != key}
    out = {}
    for setting in SETTING_SOURCES:
        texts = {run.name: _setting_text(recorded.get(setting, _ABSENT)) for run, recorded in zip(runs, settings)}
        if len(set(texts.values())) > 1:
            out[setting] = texts
    return out


def check_same_settings(runs: Sequence[Run], *, allow_mixed: bool = False) -> dict[str, dict[str, str]]:
    """Refuse runs evaluated with different :data:`STRICT_SETTINGS`; return every setting that differs.

    Runs that do not record a setting are not refused for it (it is marked ``not recorded``), as
    :func:`check_same_data` does with unrecorded data; nor are runs without BERTScore scores for
    their BERTScore settings (``not scored``).

    Raises:
        CompareError: two runs record different values of a strict setting and ``allow_mixed`` is false.
    """
    differ = differing_settings(runs)
    refused = {s: differ[s] for s in mixed_strict_settings(differ)}
    if refused and not allow_mixed:
        parts = "; ".join(f"{s}: " + ", ".join(f"{name}={text}" for name, text in v.items())
                          for s, v in refused.items())
        raise CompareError(f"runs were evaluated with different settings ({parts}); evaluate them alike, or pass "
                           "--allow-mixed-settings to compare them with the differences marked")
    return differ


def mixed_strict_settings(differ: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The strict settings that two runs of ``differ`` record with different values (the ones only
    ``--allow-mixed-settings`` lets through)."""
    return [s for s, texts in differ.items() if s in STRICT_SETTINGS
            and len({text for text in texts.values() if text not in _UNKNOWN}) > 1]
