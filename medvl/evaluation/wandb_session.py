"""The W&B session every medvl command shares: online or offline, the run's group, what a saved config may hold.

``medvl.train`` (:mod:`medvl.training.loggers`), ``medvl.eval`` and ``medvl.compare``
(:mod:`medvl.evaluation.wandb_log`) start their runs through here, so that all of them:

- log offline without an API key, and with a key but no route to the W&B server (a cluster's compute node)
  say so in one line and log offline too, instead of waiting minutes for wandb's CommError;
- join the group of the training run or sweep they belong to (:func:`run_group`, :func:`sweep_group`);
- save no secret: configs reach W&B through :func:`redact`, keys only through the environment.

It sits in the evaluation layer, below training, because evaluation may not import training (.importlinter).
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from omegaconf import OmegaConf

from medvl.config import ConfigError, is_secret_key
from medvl.runs import RunDir

log = logging.getLogger(__name__)

MASK = "***"
#: Longest side, in pixels, of the images in W&B predictions tables (the tables stay small enough to sync).
THUMBNAIL_SIZE = 128
#: Seconds to wait for the W&B host: wandb itself waits about two minutes before failing with CommError.
REACH_TIMEOUT = 5.0
ONLINE_MODES = ("online", "run")


def require_wandb(command: str) -> None:
    """One line instead of an ImportError traceback when the wandb package is missing."""
    try:
        import wandb  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{command} needs the wandb package: pip install wandb") from exc


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
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


def run_group(run: RunDir) -> str | None:
    """The W&B group of the training run that saved ``run``'s weights: the ``logger.group`` its config.yaml
    records, else, for a job of a Hydra multirun (its ``.hydra/hydra.yaml`` says so), the sweep directory's
    name, as :func:`sweep_group` gave it to the training run (the job's directory sits in the sweep's)."""
    group = OmegaConf.select(run.config, "logger.group") if run.config is not None else None
    if group:
        return str(group)
    for folder in (run.path, run.path.parent):  # <run>/adapter, <run>/model, <run>/best: the run is the parent
        hydra_file = folder / ".hydra" / "hydra.yaml"
        if hydra_file.is_file():
            # Only hydra.mode is read: the file's interpolations (${now:...}) stay unresolved.
            mode = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.mode")
            return folder.resolve().parent.name if mode == "MULTIRUN" else None
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
        raise ConfigError(f"WANDB_MODE={mode} but the W&B server {wandb_host()} cannot be reached from this node; "
                          f"set WANDB_MODE=offline (sync later with `wandb sync <run dir>/wandb/offline-run-*`) or "
                          f"unset WANDB_MODE to fall back to offline logging")
    return f"the W&B server {wandb_host()} cannot be reached from this node"


def offline_mode(offline_reason: str | None) -> dict[str, str]:
    """``wandb.init``'s ``mode="offline"`` when there is an ``offline_reason`` or, when none is given, no
    credentials; a ``WANDB_MODE`` the user set (``online``, ``offline``, ``disabled``) is otherwise left to wandb."""
    if offline_reason or (not os.environ.get("WANDB_MODE") and not has_wandb_credentials()):
        return {"mode": "offline"}
    return {}


def start_run(init_kwargs: dict[str, Any], offline_reason: str | None = None):
    """``wandb.init(**init_kwargs)``; an offline run says so in one line, with the command that syncs it."""
    import wandb

    run = wandb.init(**init_kwargs)
    if init_kwargs.get("mode") == "offline":
        folder = Path(run.dir).parent
        log.info("W&B: %s; logging offline to %s (sync later with `wandb sync %s`)",
                 offline_reason or "no API key found", folder, folder)
    return run


@contextmanager
def staging_in(folder: Path) -> Iterator[None]:
    """Stage media that wandb keeps until ``wandb sync`` (table images) in ``folder``, not in ``~/.local/share``."""
    if os.environ.get("WANDB_DATA_DIR"):
        yield
        return
    os.environ["WANDB_DATA_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("WANDB_DATA_DIR", None)


def thumbnail(root: str | Path | None, path: str | Path):
    """The image at ``path`` (relative to the data ``root``) scaled to fit :data:`THUMBNAIL_SIZE`, as PIL keeps it."""
    from medvl.data.dataset import load_image

    image = load_image(root, path)
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return image
