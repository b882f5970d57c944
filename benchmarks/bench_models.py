"""What benchmarks/gpu_train.py measures on: models of published configs with random weights (the numbers of each
hub config.json written here, no download), the FLOPs a training step of theirs needs, and Slake-like rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

IGNORE = -100
#: Qwen's special token ids (the same in every Qwen-VL checkpoint's tokenizer).
QWEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                vision_end_token_id=151653, bos_token_id=151643, eos_token_id=151645)
MRoPE2 = {"type": "mrope", "mrope_section": [16, 24, 24]}


@dataclass
class Spec:
    """A model of a published config: its conf/model preset, transformers classes and config.json numbers."""

    preset: str
    source: str  # the hub config the numbers come from
    classes: tuple[str, str]
    text: dict
    vision: dict
    tie: bool = False
    ids: dict = field(default_factory=lambda: dict(QWEN_IDS))


SPECS = {
    "2b": Spec("2b", "Qwen/Qwen2-VL-2B-Instruct config.json", ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
               dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
                    rope_theta=1e6, rope_scaling=MRoPE2),
               dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2), tie=True),
    "7b": Spec("qwen2_5_vl_7b", "Qwen/Qwen2.5-VL-7B-Instruct config.json",
               ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
               dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
                    rope_theta=1e6, rope_scaling=MRoPE2),
               dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")),
    "8b": Spec("qwen3_vl_8b", "Qwen/Qwen3-VL-8B-Instruct config.json",
               ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
               dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                    rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                        "mrope_section": [24, 20, 20], "mrope_interleaved": True}),
               dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                    patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                    deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh")),
}
# --smoke: the same classes at tiny sizes (special ids moved into a 512-token vocabulary).
_TINY_IDS = dict(image_token_id=505, video_token_id=506, vision_start_token_id=502, vision_end_token_id=503,
                 bos_token_id=500, eos_token_id=501)
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096)
SMOKE_SPECS = {
    "2b": Spec("2b", "tiny", SPECS["2b"].classes, dict(_TINY_TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
               dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2), tie=True, ids=_TINY_IDS),
    "7b": Spec("qwen2_5_vl_7b", "tiny", SPECS["7b"].classes, dict(_TINY_TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
               dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
               ids=_TINY_IDS),
    "8b": Spec("qwen3_vl_8b", "tiny", SPECS["8b"].classes,
               dict(_TINY_TEXT, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                              "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
               dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                    spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                    deepstack_visual_indexes=[0]), ids=_TINY_IDS),
}



def build_random(spec: Spec, dtype: torch.dtype, device: str, attn: str = "sdpa"):
    """A random-weight model of ``spec`` on ``device`` (``meta``: shapes only, to count parameters)."""
    import transformers

    config_class, model_class = (getattr(transformers, name) for name in spec.classes)
    text = dict(spec.text, **{k: v for k, v in spec.ids.items() if k.endswith(("bos_token_id", "eos_token_id"))})
    config = config_class(text_config=text, vision_config=spec.vision, tie_word_embeddings=spec.tie, **spec.ids)
    with torch.device(device):
        return model_class._from_config(config, dtype=dtype, attn_implementation=attn)


def with_medvl_vision_attention(model, requested: str, attn: str, dtype: torch.dtype):
    """The vision attention medvl's loader sets (:func:`medvl.models.speed.vision_attention`): PyTorch's varlen
    kernel for the Qwen-VL vision towers on a GPU without flash_attn. Returns the model."""
    try:
        from medvl.models.speed import vision_attention
    except ImportError:  # a medvl before it: the vision tower stays on the model's attention
        return model
    vision_attention(model, model.config.model_type, requested, attn, dtype)
    return model


def attention_label(model) -> str:
    """The text model's attention, and the vision tower's where it differs (the varlen kernel: "vision varlen")."""
    text = model.config.get_text_config()._attn_implementation
    vision = getattr(getattr(model.config, "vision_config", None), "_attn_implementation", text)
    return text if vision == text else f"{text}, vision {'varlen' if 'varlen' in str(vision) else vision}"


@dataclass
class Counts:
    """Parameter counts and shapes the FLOP formula needs (module docstring)."""

    llm: int
    head: int
    vision: int
    merger: int
    layers: int
    d_attn: int
    depth: int
    d_vision: int
    window_blocks: int
    window_patches: int

    @classmethod
    def of(cls, spec: Spec) -> Counts:
        model = build_random(spec, torch.bfloat16, "meta")
        sizes = {"llm": 0, "vision": 0, "merger": 0}
        for name, p in model.named_parameters():
            if name.startswith("model.language_model.") and "embed_tokens" not in name:
                sizes["llm"] += p.numel()
            elif name.startswith(("model.visual.merger", "model.visual.deepstack_merger_list")):
                sizes["merger"] += p.numel()
            elif name.startswith(("model.visual.patch_embed", "model.visual.blocks")):
                sizes["vision"] += p.numel()
        text, vision = model.config.text_config, model.config.vision_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        window = getattr(vision, "window_size", 0) // vision.patch_size
        full = getattr(vision, "fullatt_block_indexes", None)
        return cls(llm=sizes["llm"], head=model.lm_head.weight.numel(), vision=sizes["vision"], merger=sizes["merger"],
                   layers=text.num_hidden_layers, d_attn=text.num_attention_heads * head_dim, depth=vision.depth,
                   d_vision=getattr(vision, "embed_dim", vision.hidden_size),
                   window_blocks=vision.depth - len(full) if full else 0, window_patches=window * window)

    def row_flops(self, length: int, image_tokens: int, n_lora: int, answer_tokens: int, k: int = 4) -> float:
        patches = 4 * image_tokens
        llm = (k * self.llm * length + k * self.head * answer_tokens + 6 * n_lora * length
               + 6 * self.layers * self.d_attn * length**2)
        full_blocks = self.depth - self.window_blocks
        span = full_blocks * patches + self.window_blocks * min(patches, self.window_patches)
        vision = 2 * self.vision * patches + 2 * self.merger * image_tokens + 4 * self.d_vision * patches * span
        return float(llm + vision)



def make_rows(spec: Spec, n: int, image_tokens: tuple[int, int], seed: int = 0) -> list[dict]:
    """``n`` encoded rows as medvl's dataset yields them (input_ids, labels, pixel_values, image_grid_thw,
    mm_token_type_ids), Slake-like: one image of ``image_tokens`` tokens, a short question and answer."""
    gen = torch.Generator().manual_seed(seed)
    ids, v = spec.ids, spec.vision
    patch_dim = 3 * v["temporal_patch_size"] * v["patch_size"] ** 2
    pixels = torch.randn(4 * image_tokens[1] + 64, patch_dim, generator=gen)  # rows share one buffer's slices
    text_vocab = min(ids.values())  # ordinary tokens only, below the special ones

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    rows = []
    for _ in range(n):
        target = randint(*image_tokens)
        h = max(1, round(math.sqrt(target * randint(75, 133) / 100)))
        w = max(1, round(target / h))
        words = lambda k: torch.randint(0, text_vocab, (k,), generator=gen).tolist()  # noqa: E731
        prompt = (words(20) + [ids["vision_start_token_id"]] + [ids["image_token_id"]] * (h * w)
                  + [ids["vision_end_token_id"]] + words(randint(8, 24)) + words(5))
        answer = words(randint(1, 6)) + [ids["eos_token_id"]]
        input_ids = torch.tensor(prompt + answer)
        rows.append({
            "input_ids": input_ids,
            "labels": torch.tensor([IGNORE] * len(prompt) + answer),
            "mm_token_type_ids": (input_ids == ids["image_token_id"]).long(),
            "pixel_values": pixels[: 4 * h * w],
            "image_grid_thw": torch.tensor([[1, 2 * h, 2 * w]]),
        })
    return rows


