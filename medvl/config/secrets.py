"""Secret-named keys (``api_key``, ``hf_token``) are refused in a config: it is saved with the run and logged."""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medvl.config.errors import ConfigError

#: A key whose last word is one of these holds a secret: ``api_key``, ``hf_token``, ``wandbApiKey``, ``HFToken``
#: (but not ``max_new_tokens`` or ``pad_token_id``).
SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials"}


def is_secret_key(name: str) -> bool:
    words = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", str(name))  # an acronym, then a word: HF_Token
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", words)  # a word, then a capital: wandb_Api_Key
    return re.split(r"[^a-z0-9]+", words.lower())[-1] in SECRET_WORDS


def secret_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the secret-named keys in a config (values are never read)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            found += [path] if is_secret_key(key) else secret_keys(value, path + ".")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += secret_keys(value, f"{prefix}{i}.")
    return found


def refuse_secrets(keys: list[str]) -> None:
    if keys:
        raise ConfigError(f"{', '.join(keys)}: secrets must not be in the config (it is saved with the run and "
                          "logged); use the environment (WANDB_API_KEY, HF_TOKEN) or `wandb login`")
