"""The config tree on disk: where conf/ is, a group's options, and what a dataset's config file says."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: The config tree: the repository's top-level conf/, through the link medvl/conf -> ../conf, which a wheel
#: ships as the package's own files (pyproject.toml's package-data), so an installed medvl runs from anywhere.
CONF_DIR = (Path(__file__).parent.parent / "conf").resolve()


def group_choices(group: str) -> list[str]:
    """The option names of a config group, read from the conf tree."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


#: The data-config keys that name a dataset's label columns (:class:`DataConfig`).
DATASET_LABEL_KEYS = ("breakdowns", "multi_label")


def dataset_labels(name: str) -> dict[str, list[str]]:
    """``breakdowns`` and ``multi_label`` as ``conf/data/<name>.yaml`` states them (empty without the file or key)."""
    path = CONF_DIR / "data" / f"{name}.yaml"
    shipped = OmegaConf.load(path) if name and path.is_file() else OmegaConf.create()
    return {key: [str(v) for v in shipped.get(key) or []] for key in DATASET_LABEL_KEYS}


def add_dataset_labels(run_config: DictConfig | None) -> None:
    """Give a run's saved config the data label keys it lacks, from its dataset's config file (in place).

    A run saved before data configs named their breakdowns has none; merged as it is over medvl.eval's
    default data config, it would take that dataset's breakdowns for its own.
    """
    data = None if run_config is None else run_config.get("data")
    if data is None:
        return
    shipped = dataset_labels(str(data.get("name") or ""))
    for key in DATASET_LABEL_KEYS:
        if key not in data:
            data[key] = shipped[key]
