"""Callbacks that go with ``cfg.logger``, and the W&B run set-up.

HF's integrations, chosen by ``logger.report_to``, log the training curves and whatever
``Trainer.log`` receives (the validation callback's ``eval_*`` metrics included). This module adds:

- :class:`~medvl.training.monitor.TrainingMonitor` for every logger: step time, samples/s, tokens/s,
  GPU memory.
- For ``logger=wandb``, :class:`WandbRun`: it starts the run itself, before HF's ``WandbCallback``
  would (which then logs into it), so the run gets medvl's project, name, sweep group and resolved
  config; it logs a predictions table with image thumbnails at each validation; without an API key
  it runs offline, and with a key but no route to the W&B server (a cluster's compute node) it says so
  in one line and runs offline too, instead of waiting minutes for wandb's CommError. Its files go under
  the run directory.
"""

from __future__ import annotations

import logging
import netrc
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from medvl.config import is_secret_key

log = logging.getLogger(__name__)

MASK = "***"
THUMBNAIL_SIZE = 128


def logger_callbacks(cfg: DictConfig, out: Path) -> list:
    """Extra Trainer callbacks for ``cfg.logger``; HF's own integrations come from ``report_to``.

    Built before the model loads: whether W&B can log online is decided here, in seconds.
    """
    from medvl.training.monitor import TrainingMonitor

    callbacks: list = [TrainingMonitor()]
    if "wandb" in cfg.logger.report_to:
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            raise ImportError("logger=wandb needs the wandb package: pip install wandb") from exc
        from medvl.training.sweep import wants_eval_after_train

        reason = wandb_offline_reason()
        callbacks.append(WandbRun(wandb_init_kwargs(cfg, out, offline_reason=reason), image_root=cfg.data.root,
                                  max_rows=cfg.logger.log_predictions, keep_open=wants_eval_after_train(cfg),
                                  offline_reason=reason))
    log.info("Logger %s: %s", cfg.logger.name, ", ".join(type(cb).__name__ for cb in callbacks))
    return callbacks


def redact(value: Any) -> Any:
    """A copy of a plain config with the value of every secret-named key (``api_key``, ``hf_token``, ...) masked."""
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def sweep_group() -> str | None:
    """The sweep directory's name inside a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig

    from medvl.training.sweep import in_multirun

    if in_multirun():
        return Path(HydraConfig.get().sweep.dir).name
    return None


def has_wandb_credentials() -> bool:
    """Whether wandb would find credentials: ``WANDB_API_KEY``, an identity token file, or a netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        return bool(netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


#: Seconds to wait for the W&B host: wandb itself waits about two minutes before failing with CommError.
REACH_TIMEOUT = 5.0


def wandb_host() -> str:
    """The W&B server, ``host[:port]`` of ``WANDB_BASE_URL`` (default api.wandb.ai), without any credentials in it."""
    parts = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def wandb_reachable(timeout: float = REACH_TIMEOUT) -> bool:
    """Whether the W&B server answers HTTP within ``timeout`` (through the proxy the environment sets, as
    wandb would): any HTTP status, even an error, means it is reachable."""
    import urllib.error
    import urllib.request

    url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except urllib.error.URLError as exc:
        import ssl

        return isinstance(exc.reason, ssl.SSLError)  # connected; wandb's own TLS settings may still work
    except (OSError, ValueError):  # timeout, refused, unresolvable host, malformed URL
        return False
    return True


ONLINE_MODES = ("online", "run")


def wandb_offline_reason() -> str | None:
    """Why this run logs to W&B offline (None: online, or the user's ``WANDB_MODE`` decides).

    Raises:
        ConfigError: ``WANDB_MODE=online`` is set but the server cannot be reached (wandb would wait
            minutes, then fail with a traceback).
    """
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode and mode not in ONLINE_MODES:
        return None
    if not mode and not has_wandb_credentials():
        return "no API key found"
    if wandb_reachable():
        return None
    if mode:
        from medvl.config import ConfigError

        raise ConfigError(f"WANDB_MODE={mode} but the W&B server {wandb_host()} cannot be reached from this node; "
                          f"set WANDB_MODE=offline (sync later with `wandb sync <run dir>/wandb/offline-run-*`) or "
                          f"unset WANDB_MODE to fall back to offline logging")
    return f"the W&B server {wandb_host()} cannot be reached from this node"


def wandb_init_kwargs(cfg: DictConfig, out: Path, offline_reason: str | None = None) -> dict[str, Any]:
    """``wandb.init`` arguments for this run; ``mode="offline"`` when there is an ``offline_reason``
    (:func:`wandb_offline_reason`), or, when none is given, without credentials.

    A ``WANDB_MODE`` the user set (``online``, ``offline``, ``disabled``) is otherwise left to wandb.
    """
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    group = sweep_group()
    kwargs: dict[str, Any] = {
        "project": cfg.logger.project,
        # A sweep's jobs share run_name: the job's directory (``<num>_<overrides>``) tells them apart.
        "name": cfg.run_name if group is None else f"{cfg.run_name}-{out.name}",
        "group": cfg.logger.group or group,
        "tags": list(cfg.logger.tags) or None,
        "dir": str(out),
        # One key: HF's WandbCallback adds TrainingArguments (``deepspeed``, ``run_name``, ...) at the top level.
        "config": {"medvl": redact(config)},
    }
    if offline_reason or (not os.environ.get("WANDB_MODE") and not has_wandb_credentials()):
        kwargs["mode"] = "offline"
    return kwargs


@contextmanager
def _staging_in(folder: Path):
    """Stage media that wandb keeps until ``wandb sync`` (table images) in ``folder``, not in ``~/.local/share``."""
    if os.environ.get("WANDB_DATA_DIR"):
        yield
        return
    os.environ["WANDB_DATA_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("WANDB_DATA_DIR", None)


class WandbRun(TrainerCallback):
    """Owns the W&B run of one training: started in ``on_init_end`` (before HF's ``WandbCallback`` starts
    one of its own in ``on_train_begin``), a predictions table after each validation, finished at the end
    of training or, with ``keep_open``, after the evaluation that follows it (:meth:`log_final_eval`).

    Args:
        init_kwargs: from :func:`wandb_init_kwargs`.
        image_root: the data root that rows' image paths are relative to.
        max_rows: validation rows in the table (0: no table).
        keep_open: leave the run open at the end of training for :meth:`log_final_eval`.
        offline_reason: why the run logs offline, for the line that says so.
    """

    def __init__(self, init_kwargs: dict[str, Any], *, image_root: str | Path, max_rows: int,
                 keep_open: bool = False, offline_reason: str | None = None):
        self.init_kwargs = init_kwargs
        self.offline_reason = offline_reason or "no API key found"
        self.image_root = image_root
        self.max_rows = max_rows
        self.keep_open = keep_open
        self.trainer = None  # set by train(): the validation callback is found through it
        self.run = None
        self._thumbnails: dict[str, Any] = {}

    def on_init_end(self, args, state, control, **kwargs):
        import wandb

        if not state.is_world_process_zero or self.run is not None:
            return
        self.run = wandb.init(**self.init_kwargs)
        if self.init_kwargs.get("mode") == "offline":
            folder = Path(self.run.dir).parent
            log.info("W&B: %s; logging offline to %s (sync later with `wandb sync %s`)",
                     self.offline_reason, folder, folder)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.run is None or not self.max_rows or not any(k.startswith("eval_overall/") for k in logs or {}):
            return
        validation = self._validation_callback()
        if validation is None or not getattr(validation, "records", None):
            return
        with _staging_in(Path(self.run.dir).parent):
            table = self.predictions_table(validation.records, validation.rows)
            self.run.log({"eval/predictions": table, "train/global_step": state.global_step})

    def on_train_end(self, args, state, control, **kwargs):
        if self.run is not None and not self.keep_open:  # kept open for the evaluation after training
            self.finish()

    def log_final_eval(self, tables: dict[str, Any]) -> None:
        """The evaluation after training (``eval_after_train``) into this run, as ``final_eval/<group>/<metric>``
        in its history and summary; then the run is finished."""
        if self.run is None:
            return
        from medvl.training.callbacks import flatten

        values = {key.replace("final_eval_", "final_eval/", 1): value
                  for key, value in flatten(tables, prefix="final_eval").items()}
        self.run.log(values)
        self.run.summary.update(values)
        self.finish()

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def _validation_callback(self):
        from medvl.training.callbacks import GenerationEvalCallback

        callbacks = self.trainer.callback_handler.callbacks if self.trainer is not None else []
        return next((cb for cb in callbacks if isinstance(cb, GenerationEvalCallback)), None)

    def _thumbnail(self, row: dict[str, Any]):
        from medvl.data.dataset import load_image
        from medvl.data.format import image_paths

        paths = image_paths(row)
        if not paths:
            return None
        if paths[0] not in self._thumbnails:  # the same rows at every validation: decode each image once
            image = load_image(self.image_root, paths[0])
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            self._thumbnails[paths[0]] = image
        return self._thumbnails[paths[0]]

    def predictions_table(self, records: list[dict[str, Any]], rows: list[dict[str, Any]]):
        """One row per validation record: id, image thumbnail, question, reference, prediction, category."""
        import wandb

        table = wandb.Table(columns=["id", "image", "question", "reference", "prediction", "category"])
        for record, row in list(zip(records, rows))[: self.max_rows]:
            thumbnail = self._thumbnail(row)
            table.add_data(record["id"], wandb.Image(thumbnail) if thumbnail is not None else None,
                           record["question"], record["reference"], record["prediction"], record["category"])
        return table
