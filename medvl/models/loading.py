"""Load a model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3) and its processor from a hub id or a local directory.

The tiny offline models are built into the cache on first use and then go through the very same
``from_pretrained`` calls as ``Qwen/Qwen2-VL-7B-Instruct``. Loading never runs checkpoint code:
safetensors only, ``trust_remote_code`` off unless the model config asks for it.

A run's weights (:class:`medvl.runs.RunDir`) are loaded here too, by train, eval and export alike: an adapter on
top of its stage chain, merged exactly as training built it (:func:`load_run_weights`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from medvl.config.families import DEFAULT_FAMILY, FAMILIES, family_name, model_family
from medvl.models.speed import resolve_attn_implementation, vision_attention
from medvl.runs import RunDir

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model or processor could not be loaded; the message is one line."""


def resolve_model_path(model_cfg: Any) -> str:
    """Return what to pass to ``from_pretrained``: a local dir (built if tiny) or a hub id."""
    path = str(model_cfg.name_or_path)
    if path.startswith("~"):
        path = str(Path(path).expanduser())
    if model_cfg.build_tiny:
        from medvl.models.tiny import build_tiny

        build_tiny(path, family=family_name(getattr(model_cfg, "family", DEFAULT_FAMILY)))
    return path


def load_dtype(name: str) -> torch.dtype | str:
    """``model.dtype`` as ``from_pretrained`` takes it."""
    if name == "auto":
        # bf16 on GPUs that have it, float32 on CPU (bf16 matmuls are slow and lossy there).
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def attention_of(model_cfg: Any) -> str:
    """The attention kernel :func:`load_model` will load ``model_cfg`` with (``auto`` resolved on this machine)."""
    return resolve_attn_implementation(model_cfg.attn_implementation, load_dtype(str(model_cfg.dtype)), quiet=True,
                                       family=getattr(model_cfg, "family", DEFAULT_FAMILY))


def _is_local_path(path: str) -> bool:
    """Whether ``path`` can only mean a directory: a hub id is ``name`` or ``org/name``."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path


def _explain(path: str, exc: Exception) -> ModelLoadError:
    """One line for a loading error: what transformers said, or for a path that is not there, what to do. Only an
    OSError (transformers' "cannot connect", "no such file") can mean a missing download: a ValueError is about
    the checkpoint itself (an attention it does not run under, a config transformers cannot read)."""
    if Path(path).exists() or not isinstance(exc, OSError):
        return ModelLoadError(f"cannot load model from {path}: {str(exc).splitlines()[0]}")
    if _is_local_path(path):
        return ModelLoadError(f"cannot load '{path}': no such directory; set model.name_or_path to a local "
                              f"model directory or a hub id such as Qwen/Qwen2-VL-7B-Instruct")
    return ModelLoadError(
        f"cannot load '{path}': it is not a local directory and the Hugging Face hub cannot be reached "
        f"(offline?); download it where there is network (huggingface-cli download {path} --local-dir DIR) "
        f"and set model.name_or_path=DIR"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_available(path: str) -> None:
    """Fail fast, in one line, for a hub id that is neither cached locally nor downloadable.

    Without this, huggingface_hub retries for about a minute before giving up on a machine
    with no network.
    """
    if Path(path).exists():
        return
    if _is_local_path(path):
        raise _explain(path, FileNotFoundError(path))
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(path, local_files_only=True, allow_patterns=["config.json"])
        return
    except Exception:  # noqa: BLE001 - not in the local cache: try the network below
        pass
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or not _hub_reachable():
        raise _explain(path, OSError("offline"))


def check_family(model_cfg: Any, path: str) -> None:
    """One line, before any weights load, for a checkpoint that is not of ``model.family``.

    Its ``model_type`` (config.json) is the family whose component map medvl must use: with another family's,
    a run trains the wrong modules (or none) and fails in its first step, e.g. a MedGemma directory given to a
    Qwen2-VL preset. A checkpoint without a readable config.json is left to ``from_pretrained`` to explain.
    """
    from transformers import PretrainedConfig

    try:
        model_type = PretrainedConfig.get_config_dict(path)[0].get("model_type")
    except (OSError, ValueError):
        return
    family = family_name(getattr(model_cfg, "family", DEFAULT_FAMILY))
    if model_type is None or model_type == family:
        return
    if model_type not in FAMILIES:
        raise ModelLoadError(f"{path} is a {model_type} checkpoint, a model family medvl has no component map for "
                             f"(known: {', '.join(FAMILIES)}); add a FamilySpec for {model_type} to "
                             f"medvl.config.families.FAMILIES and a conf/model file")
    raise ModelLoadError(f"model.family={family} but {path} is a {model_type} checkpoint; "
                         f"set model.family={model_type}")


def processor_budget(model_cfg: Any) -> dict[str, Any]:
    """The processor's pixel budget (its ``size``): none for a family whose processor resizes every image to one
    square (``FamilySpec.fixed_image_size``, Gemma 3)."""
    if model_family(model_cfg).fixed_image_size:
        return {}
    # Qwen-VL image processors in transformers 5 take the pixel budget as `size`.
    return {"size": {"shortest_edge": int(model_cfg.min_pixels), "longest_edge": int(model_cfg.max_pixels)}}


#: Image processor names that checkpoints fine-tuned with forks of transformers carry, and the class stock
#: transformers has for them: Qwen2.5-VL has always used Qwen2-VL's image processor (Qwen2.5-VL-7B-Instruct's
#: own preprocessor_config.json names Qwen2VLImageProcessor), and transformers 5 refuses the fork's name
#: ("Unrecognized image processor").
RENAMED_IMAGE_PROCESSORS = {"Qwen2_5_VLImageProcessor": "Qwen2VLImageProcessor"}
#: Weight files, left out of the copy of a checkpoint's processor files.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


@contextmanager
def renamed_image_processor(path: str) -> Iterator[str | None]:
    """A temporary copy of the checkpoint's processor files (no weights) whose ``preprocessor_config.json`` names
    the stock class for one of :data:`RENAMED_IMAGE_PROCESSORS`, said in the log; None when it names none.
    The checkpoint itself (a download in the Hub cache, perhaps read-only) is never written."""
    import json
    import shutil
    import tempfile

    source = Path(path)
    if not source.is_dir():
        from huggingface_hub import snapshot_download

        try:  # the processor files only, from the cache (or the Hub where it is reachable)
            source = Path(snapshot_download(path, ignore_patterns=[f"*{s}" for s in _WEIGHT_SUFFIXES]))
        except Exception:  # noqa: BLE001 - the caller explains the first error
            yield None
            return
    config_path = source / "preprocessor_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        yield None
        return
    stock = RENAMED_IMAGE_PROCESSORS.get(config.get("image_processor_type"))
    if stock is None:
        yield None
        return
    log.warning("%s names the image processor %s, which transformers does not have; loading it as %s, the class "
                "of that name in transformers", path, config["image_processor_type"], stock)
    with tempfile.TemporaryDirectory(prefix="medvl-processor-") as copy:
        for item in source.iterdir():
            if item.is_file() and not item.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copyfile(item, Path(copy) / item.name)  # a Hub cache holds links: their targets are copied
        config["image_processor_type"] = stock
        (Path(copy) / config_path.name).write_text(json.dumps(config, indent=2))
        yield copy


def load_processor(model_cfg: Any, path: str | None = None):
    """Load the processor with the configured min/max image pixels."""
    from transformers import AutoProcessor

    path = path or resolve_model_path(model_cfg)
    check_available(path)
    check_family(model_cfg, path)
    remote_code = bool(model_cfg.trust_remote_code)
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=remote_code)
    except (OSError, ValueError) as exc:
        with renamed_image_processor(path) as renamed:
            if renamed is None:
                raise _explain(path, exc) from None
            processor = AutoProcessor.from_pretrained(renamed, trust_remote_code=remote_code)
    budget = processor_budget(model_cfg)
    if budget:
        # Set on the built processor, not passed to from_pretrained: the published preprocessor configs of
        # Qwen2-VL, Qwen2.5-VL and Lingshu carry min_pixels/max_pixels (3136 and 12845056: up to 16,384 image
        # tokens), which transformers lets override a `size` given as it loads, and min_pixels/max_pixels keywords
        # would be passed to every processor call (deprecated in transformers 5.25).
        from transformers.image_utils import SizeDict

        processor.image_processor.size = SizeDict(**budget["size"])
    return processor


def load_model(model_cfg: Any, path: str | None = None, *, device: str | torch.device | None = None,
               device_map: str | dict[str, Any] | None = None, quantization_config: Any = None):
    """Load the model for image-text-to-text generation in the configured dtype and attention.

    ``device`` moves the whole model to one device after loading. ``device_map="auto"`` places its layers
    over all visible GPUs (then CPU memory) as they load, for a model larger than one GPU (accelerate's
    big-model inference; generation then runs the layers one GPU after another). ``quantization_config``:
    QLoRA's 4-bit base (:func:`medvl.models.speed.quantization_config`), quantized on the GPU as it loads.
    """
    from transformers import AutoModelForImageTextToText

    path = path or resolve_model_path(model_cfg)
    check_available(path)
    check_family(model_cfg, path)
    log.info("Loading model %s", path)
    dtype = load_dtype(str(model_cfg.dtype))
    extra = {"device_map": device_map} if device_map is not None else {}
    if quantization_config is not None:
        extra["quantization_config"] = quantization_config
    attn = resolve_attn_implementation(model_cfg.attn_implementation, dtype,
                                       family=getattr(model_cfg, "family", DEFAULT_FAMILY))
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path,
            dtype=dtype,
            attn_implementation=attn,
            # transformers 5.25 swaps layers for kernels from the Hub by default (downloaded as the model loads, and
            # put back on every train()/eval(), which would undo trainer.liger's kernels): medvl chooses its kernels.
            use_kernels=False,
            use_safetensors=True,
            trust_remote_code=bool(model_cfg.trust_remote_code),
            **extra,
        )
    except (OSError, ValueError) as exc:
        raise _explain(path, exc) from None
    vision_attention(model, getattr(model_cfg, "family", DEFAULT_FAMILY), model_cfg.attn_implementation, attn, dtype,
                     device if device_map is None else device_map)
    if device is not None and device_map is None:
        model.to(device)
    return model


def load_run(model_cfg: Any, run: RunDir | None, **place):
    """(model, processor) of a run as it ended training (the base model when ``run`` is None), e.g. to evaluate
    or export it. ``place``: :func:`load_model`'s ``device`` or ``device_map``."""
    base = resolve_model_path(model_cfg)
    model = load_run_weights(model_cfg, run, base, **place)
    return model, load_processor(model_cfg, str(run.path) if run is not None and run.kind == "model" else base)


def load_run_weights(model_cfg: Any, run: RunDir | None, base: str, *,
                     around_merges: Callable[[Any], AbstractContextManager] | None = None, **place):
    """The weights ``run`` ended with, rebuilt exactly as training built them (``base`` when ``run`` is None).

    A run that saved a whole model is loaded as it is. A LoRA run's adapter was trained on top of its stage
    chain (``init_from``): the nearest earlier stage that saved a whole model (else ``base``) is loaded, and
    every adapter above it is merged in, oldest first. ``around_merges(model)`` wraps the merges: under ZeRO-3
    the partitioned weights are gathered for them (:func:`medvl.training.run.gathered`).
    """
    from peft import PeftModel

    stages = run.weight_stages() if run is not None else []
    start = str(stages[-1].path) if stages and stages[-1].kind == "model" else base
    adapters = [stage for stage in stages if stage.kind == "adapter"]
    model = load_model(model_cfg, start, **place)
    if not adapters:
        return model
    with (around_merges or nullcontext)(model):
        for stage in reversed(adapters):
            _warn_if_other_base(stage, start)
            log.info("Merging the adapter in %s into the base weights", stage.path)
            model = PeftModel.from_pretrained(model, str(stage.path)).merge_and_unload()
    return model


def _warn_if_other_base(adapter: RunDir, base: str) -> None:
    """peft applies an adapter to any model whose module names match (a Qwen2-VL adapter to a Qwen2.5-VL
    model, silently): say so when the adapter records another base than the one it is put on."""
    recorded = adapter.trained_on
    if not recorded or recorded == base:
        return
    if Path(recorded).exists() and Path(base).exists() and Path(recorded).resolve() == Path(base).resolve():
        return
    log.warning("The adapter in %s was trained on %s but is applied to %s; set model=... (or "
                "model.name_or_path=...) if that is not the same model", adapter.path, recorded, base)
