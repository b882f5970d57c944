"""Start-up of the ``python -m medvl.<command>`` modules: compose the config with the command line and check it,
or exit with one line that names the key and the valid choices, before Hydra writes a run directory and before
any weights load.

An entry-point helper, above training and evaluation: a training config's checks include the metric names and
scoring needs that only they know (:mod:`medvl.training.checks`).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from medvl.config import (
    CONF_DIR,
    SCHEMAS,
    ConfigError,
    check_init_from,
    group_choices,
    is_secret_key,
    refuse_secrets,
    secret_keys,
    validate_eval,
)
from medvl.training.checks import check_eval_after_train, validate_training


def _one_line(exc: BaseException, overrides: list[str], schema: type) -> str:
    """Explain a composition failure in one line naming the key and the valid choices."""
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if "." in key or not (CONF_DIR / key).is_dir():
            continue
        if value not in group_choices(key):
            return f"invalid choice {key}={value}; valid choices for {key}: {', '.join(group_choices(key))}"
    msg = str(exc).strip()
    full_key = getattr(exc, "full_key", None)
    cause = exc.__cause__ or exc.__context__
    if full_key is None and cause is not None:
        full_key = getattr(cause, "full_key", None)
        msg = str(cause).strip() or msg
    first = msg.splitlines()[0] if msg else type(exc).__name__
    if full_key and "not in" in first:
        parent, _, _ = str(full_key).rpartition(".")
        node = OmegaConf.structured(schema)
        valid = OmegaConf.select(node, parent) if parent else node
        names = ", ".join(valid.keys()) if isinstance(valid, DictConfig) else ""
        return f"unknown key {full_key}; valid keys{' in ' + parent if parent else ''}: {names}"
    if full_key:
        return f"{full_key}: {first}"
    return first


_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd",
                     "--config-path", "-cp", "--experimental-rerun"}


def _secret_override_keys(argv: list[str]) -> list[str]:
    """Secret-named keys among the overrides: their own keys, and keys inside dict values, every
    value of a sweep included (``-m '+extra={api_key:...},{}'``), which no composed config shows
    before Hydra writes multirun.yaml."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys = []
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key = arg.lstrip("+~").partition("=")[0]
        if is_secret_key(key.rpartition(".")[2]):
            keys.append(key)
            continue
        try:
            override = parser.parse_override(arg)
            values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        except Exception:  # noqa: BLE001 - a malformed override gets Hydra's own error
            continue
        keys += [f"{key}.{path}" for value in values for path in secret_keys(value)]
    return keys


def preflight(config_name: str, argv: list[str]) -> None:
    """Compose ``config_name`` with the command-line overrides and validate it, or exit with one line.

    Multirun sweeps and Hydra's own flags are left to Hydra; each swept job still runs
    :func:`~medvl.training.checks.validate_training` when it starts.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    # Before Hydra writes .hydra/ (and, for -m, multirun.yaml) with the overrides in them.
    try:
        refuse_secrets(_secret_override_keys(argv))
    except ConfigError as exc:
        sys.exit(f"medvl: {exc}")
    if any(a in ("--help", "-h", "--hydra-help", "--info") or a.startswith("--info") for a in argv):
        return
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-") and (not arg.startswith("hydra") or arg.startswith("hydra.searchpath")):
            overrides.append(arg)  # a config folder of one's own (hydra.searchpath) adds choices to compose
    if any(a in ("-m", "--multirun") for a in argv):
        _preflight_sweep(config_name, overrides)
        return
    printing = any(a in ("--cfg", "-c") for a in argv)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
            refuse_secrets(secret_keys(cfg))  # from a config file of one's own (hydra.searchpath), for every command
            if config_name == "train":
                validate_training(cfg)
                if cfg.eval_after_train and not printing:
                    check_eval_after_train(cfg)
            elif config_name == "eval":
                validate_eval(cfg)
    except ConfigError as exc:
        sys.exit(f"medvl: {exc}")
    except Exception as exc:  # noqa: BLE001 - every composition error becomes one line
        sys.exit(f"medvl: {_one_line(exc, overrides, SCHEMAS[config_name])}")
    finally:
        GlobalHydra.instance().clear()


def _preflight_sweep(config_name: str, overrides: list[str]) -> None:
    """Before a multirun starts, or exit with one line:
    - secret-named keys from config files (a ``hydra.searchpath`` folder of one's own), in the config of every
      value of every swept override: Hydra writes multirun.yaml and each job's .hydra/ before any job runs;
    - for ``medvl.train``, on the first job's config, a later stage's ``init_from`` and what every job's
      evaluation after training needs (Java for METEOR, ...). Otherwise each job would fail alike.

    Other errors are left to the jobs, each of which validates its own config when it starts.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, first, swept = OverridesParser.create(), [], []
    for i, arg in enumerate(overrides):
        try:
            override = parser.parse_override(arg)
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else []
        except Exception:  # noqa: BLE001 - a malformed override gets Hydra's own error
            return
        key = arg.partition("=")[0]
        first.append(f"{key}={values[0]}" if values else arg)
        swept += [(i, f"{key}={value}") for value in values[1:]]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=first)
            refuse_secrets(secret_keys(cfg))
            for i, value in swept:  # each other value once, with the first job's others: a few compositions
                refuse_secrets(secret_keys(compose(config_name=config_name, overrides=[*first[:i], value,
                                                                                          *first[i + 1:]])))
        if config_name != "train":
            return
        check_init_from(cfg)  # a later stage's sweep without init_from: every job would stop alike
        if cfg.eval_after_train is not False:  # null: on in a sweep
            check_eval_after_train(cfg)
    except ConfigError as exc:
        sys.exit(f"medvl: {exc}")
    except Exception:  # noqa: BLE001 - composition errors are Hydra's and the jobs' to report
        return
    finally:
        GlobalHydra.instance().clear()
