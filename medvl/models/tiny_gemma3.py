"""A tiny offline MedGemma (Gemma 3: SigLIP vision tower, projector, Gemma 3 LLM) for tests.

Built from small configs with the real transformers classes, like :mod:`medvl.models.tiny`'s Qwen models:
a byte-level BPE tokenizer trained on the synthetic data's text plus Gemma's special tokens, Gemma 3's chat
markup (``<start_of_turn>user`` / ``<start_of_turn>model``, the system prompt folded into the first user
turn) and its fixed image size: every image is resized to one square and becomes ``IMAGE_TOKENS`` tokens.
"""

from __future__ import annotations

from medvl.models.tiny_bpe import train_byte_bpe

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>"]
#: Side of the square every image is resized to, its patch size and the tokens an image becomes. MedGemma:
#: 896 px, 14 px patches, 256 tokens, each 56x56 px; here 224 px, 14 px patches, pooled 4x4 to 16 tokens of
#: the same 56x56 px (the gemma3 FamilySpec's pixels_per_token, medvl.config.families).
IMAGE_SIZE, PATCH_SIZE, IMAGE_TOKENS = 224, 14, 16

# MedGemma-4B-it's chat template, shortened: same turn markup, roles user/model, system prompt folded in.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=64,
                   max_position_embeddings=4096, initializer_range=0.1)
VISION_CONFIG = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, vision_use_head=False)


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE on ``corpus`` with Gemma's special tokens (GemmaTokenizer would swap in its own SentencePiece
    normalizer, which this vocabulary lacks: plain fast tokenizer, loaded by AutoTokenizer all the same)."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(corpus, vocab_size, SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"})


def build(corpus: list[str], vocab_size: int):
    """(model, processor) of a tiny Gemma 3 with random weights, its tokenizer trained on ``corpus``."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    tokenizer = build_tokenizer(corpus, vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    token_ids = dict(pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"])
    config = Gemma3Config(
        text_config={**TEXT_CONFIG, **token_ids, "vocab_size": len(tokenizer)}, vision_config=VISION_CONFIG,
        mm_tokens_per_image=IMAGE_TOKENS, boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"],
        tie_word_embeddings=False, **token_ids,
    )
    model = Gemma3ForConditionalGeneration(config)
    # MedGemma-it ends a reply with <end_of_turn> (generation_config eos_token_id [1, 106]).
    model.generation_config.eos_token_id = [ids["<eos>"], ids["<end_of_turn>"]]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.bos_token_id = ids["<bos>"]
    image_processor = Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                                image_seq_length=IMAGE_TOKENS)
    return model, processor
