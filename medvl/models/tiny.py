"""Tiny offline models of each family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and its MoE) for tests and the demo.

They are built from small configs with the real transformers classes, given a byte-level BPE
tokenizer trained on the synthetic data's text plus Qwen's special tokens and a Qwen-style chat
template, and saved with ``save_pretrained``. Afterwards they load through exactly the same
``from_pretrained`` path as ``Qwen/Qwen2-VL-7B-Instruct``. Building is deterministic.
MedGemma's (Gemma 3) tiny model is built by :mod:`medvl.models.tiny_gemma3`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock

from medvl.models.tiny_bpe import train_byte_bpe

log = logging.getLogger(__name__)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2-VL-Instruct's chat template, shortened: same turn markup, same default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL-Instruct's template has no default system prompt: a conversation without one starts at the user turn.
CHAT_TEMPLATE_QWEN3 = CHAT_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT
    + "<|im_end|>\n{% endif %}", "")

TEXT_CONFIG = dict(hidden_size=128, initializer_range=0.1, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=256, max_position_embeddings=4096,
                   rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]})
VISION_CONFIG = {
    "qwen2_vl": dict(initializer_range=0.1, depth=2, embed_dim=64, hidden_size=128, num_heads=4, patch_size=14, spatial_merge_size=2,
                     temporal_patch_size=2, mlp_ratio=2),
    "qwen2_5_vl": dict(initializer_range=0.1, depth=2, hidden_size=64, out_hidden_size=128, intermediate_size=128, num_heads=4,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                       fullatt_block_indexes=[1]),
    # 16 px patches like the real Qwen3-VL (an image token is 32x32 pixels); 3 blocks, two of them deepstack.
    "qwen3_vl": dict(initializer_range=0.1, depth=3, hidden_size=64, intermediate_size=128, num_heads=4,
                     patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=128,
                     num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
}
VISION_CONFIG["qwen3_vl_moe"] = VISION_CONFIG["qwen3_vl"]
#: Qwen3-VL's text config names its rotary settings rope_parameters; interleaved mrope as in the real checkpoints.
QWEN3_TEXT = dict({k: v for k, v in TEXT_CONFIG.items() if k != "rope_scaling"}, head_dim=32,
                  rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 6, 6],
                                   "mrope_interleaved": True})
#: Four experts, two per token: the smallest MoE that still routes.
TEXT_CONFIG_FOR = {"qwen2_vl": TEXT_CONFIG, "qwen2_5_vl": TEXT_CONFIG, "qwen3_vl": QWEN3_TEXT,
                   "qwen3_vl_moe": dict(QWEN3_TEXT, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)}
#: (config class, model class, patch size) of each Qwen family, by transformers name.
CLASSES = {
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", 14),
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", 14),
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", 16),
    "qwen3_vl_moe": ("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration", 16),
}
VOCAB_SIZE = 1024


def build_tokenizer(texts: list[str]):
    """Train a byte-level BPE on ``texts`` and wrap it as a Qwen2 fast tokenizer."""
    from transformers import Qwen2TokenizerFast

    tok = train_byte_bpe(texts, VOCAB_SIZE, SPECIAL_TOKENS)
    return Qwen2TokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", unk_token=None, errors="replace")


def _tokenizer_corpus() -> list[str]:
    from medvl.data.synth import corpus_text

    chat_words = ["system", "user", "assistant", DEFAULT_SYSTEM_PROMPT,
                  "Answer with a single word or phrase.", "Answer the question."]
    return corpus_text() * 4 + chat_words


def build_tiny(out_dir: str | Path, family: str = "qwen2_vl", seed: int = 0) -> Path:
    """Build the tiny model, tokenizer and processor into ``out_dir`` (once; later calls return it)."""
    from medvl.data import synth
    from medvl.models import tiny_bpe, tiny_gemma3

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The tokenizer is trained on the synthetic data's text: the modules' sources are in the stamp,
    # so a model cached by other code is rebuilt instead of silently reused.
    stamp = {"family": family, "seed": seed,
             "code": synth.source_digest(__file__, synth.__file__, tiny_bpe.__file__,
                                         *([tiny_gemma3.__file__] if family == "gemma3" else []))}
    with FileLock(str(out_dir) + ".lock"):
        if (out_dir / "config.json").exists():
            built = out_dir / "medvl_tiny.json"
            if built.exists() and json.loads(built.read_text()) == stamp:
                return out_dir
            log.warning("Rebuilding the tiny model in %s: it was built by other code", out_dir)
            shutil.rmtree(out_dir)
        log.info("Building tiny %s model into %s", family, out_dir)
        # Its own random stream: a training run that builds the model on first use must draw the same LoRA
        # initialisation and data order afterwards as one that finds it built.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if family == "gemma3":
                model, processor = tiny_gemma3.build(_tokenizer_corpus(), VOCAB_SIZE)
            else:
                model, processor = _build_qwen(family, _tokenizer_corpus())
        model.generation_config.do_sample = False
        tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "medvl_tiny.json").write_text(json.dumps(stamp))
        tmp.rename(out_dir)
    return out_dir


def _build_qwen(family: str, corpus: list[str]):
    """(model, processor) of a tiny Qwen-VL family model with random weights."""
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    tokenizer = build_tokenizer(corpus)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    token_ids = dict(
        vocab_size=len(tokenizer), bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config_class, model_class, patch = CLASSES[family]
    config = getattr(transformers, config_class)(text_config={**TEXT_CONFIG_FOR[family], **token_ids},
                                                 vision_config=VISION_CONFIG[family], **common, **token_ids)
    model = getattr(transformers, model_class)(config)
    model.generation_config.eos_token_id = token_ids["eos_token_id"]
    model.generation_config.pad_token_id = token_ids["pad_token_id"]
    model.generation_config.bos_token_id = token_ids["bos_token_id"]
    # Pixel budget of 4 to 16 image tokens, whatever the patch size.
    side = 2 * patch
    image_processor = Qwen2VLImageProcessor(patch_size=patch, min_pixels=(2 * side) ** 2, max_pixels=(4 * side) ** 2)
    if family.startswith("qwen3"):
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

        return model, Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                       video_processor=Qwen3VLVideoProcessor(), chat_template=CHAT_TEMPLATE_QWEN3)
    from transformers import Qwen2VLVideoProcessor

    return model, Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
