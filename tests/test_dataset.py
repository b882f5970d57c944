"""Chat template, image-token expansion, label masking, padding and length grouping."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from medvl.data.dataset import IGNORE_INDEX, Collator, VQADataset, append_answer, encode, encode_prompts, first_turn
from medvl.data.format import make_row, read_jsonl
from medvl.data.token_length import image_token_count, token_length
from medvl.models.loading import load_processor


@pytest.fixture(scope="module")
def processor(tiny_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir)


def labelled(item, processor) -> str:
    return processor.tokenizer.decode(item["labels"][item["labels"] != IGNORE_INDEX])


def test_labels_are_exactly_the_answer_and_end_of_turn(processor, small_synth):
    for row in read_jsonl(small_synth / "test.jsonl")[:20]:
        item = encode(row, processor, small_synth)
        assert labelled(item, processor) == row["conversations"][1]["value"] + "<|im_end|>"
        text = processor.tokenizer.decode(item["input_ids"])
        assert text.endswith("<|im_start|>assistant\n" + row["conversations"][1]["value"] + "<|im_end|>\n")
        # The labelled tokens are the last ones before the template's trailing newline.
        last = (item["labels"] != IGNORE_INDEX).nonzero().max().item()
        assert last == len(item["input_ids"]) - 2


def test_full_text_matches_the_models_own_chat_template(processor, small_synth):
    row = read_jsonl(small_synth / "train.jsonl")[0]
    multi = {**row, "conversations": row["conversations"] + [
        {"from": "human", "value": "And the modality?"}, {"from": "gpt", "value": "CT"}]}
    item = encode(multi, processor, small_synth, system_prompt="Answer with a single word or phrase.")
    from medvl.data.chat import to_messages

    expected = processor.apply_chat_template(to_messages(multi, "Answer with a single word or phrase."),
                                             tokenize=False)
    n_img = int((item["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    decoded = processor.tokenizer.decode(item["input_ids"]).replace("<|image_pad|>" * n_img, "<|image_pad|>")
    assert decoded == expected
    assert labelled(item, processor) == f"{row['conversations'][1]['value']}<|im_end|>CT<|im_end|>"


def test_image_tokens_expand_as_the_processor_does(processor, small_synth, tmp_path):
    Image.new("L", (300, 170)).save(tmp_path / "big.png")
    row = make_row("r", "big.png", "What is shown?", "nothing")
    item = encode(row, processor, tmp_path)
    grid = item["image_grid_thw"][0]
    n_expected = int(grid.prod()) // 4
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((item["input_ids"] == image_pad).sum()) == n_expected
    assert image_token_count(300, 170, processor.image_processor) == n_expected
    assert item["pixel_values"].shape[0] == int(grid.prod())


def test_header_length_equals_encoded_length(processor, small_synth, tmp_path):
    rows = read_jsonl(small_synth / "train.jsonl")[:40]
    for size in [(56, 56), (1000, 240), (30, 400)]:
        name = f"img_{size[0]}x{size[1]}.png"
        Image.new("RGB", size).save(small_synth / name)
        rows.append(make_row(name, name, "Describe the image.", "a long answer with many words in it"))
    for row in rows:
        assert token_length(row, processor, small_synth) == len(encode(row, processor, small_synth)["input_ids"])
    ds = VQADataset(rows, processor, small_synth)
    assert ds.lengths == [len(ds[i]["input_ids"]) for i in range(len(rows))]


def test_prompt_only_encoding_ends_with_the_assistant_header(processor, small_synth):
    row = read_jsonl(small_synth / "test.jsonl")[0]
    item = encode(row, processor, small_synth, with_answer=False, system_prompt="Be brief.")
    text = processor.tokenizer.decode(item["input_ids"])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    assert (item["labels"] == IGNORE_INDEX).all()


@pytest.mark.parametrize("system_prompt", [None, "Answer with a single word or phrase."])
def test_batched_prompt_encoding_equals_encode_row_by_row(processor, small_synth, system_prompt):
    rows = read_jsonl(small_synth / "test.jsonl")[:5]
    for size in [(300, 170), (56, 56)]:  # other image sizes: other token counts, so batch padding
        name = f"prompt_{size[0]}x{size[1]}.png"
        Image.new("RGB", size, color=(size[0] % 255, 90, 30)).save(small_synth / name)
        rows.append(make_row(name, name, "What is shown here?", "x"))
    two = make_row("two", ["prompt_300x170.png", "prompt_56x56.png"], "Compare the two images.", "same")
    rows += [two, make_row("text", None, "What does MRI stand for?", "magnetic resonance imaging")]
    batched = encode_prompts(rows, processor, small_synth, system_prompt=system_prompt)
    assert len(batched) == len(rows)
    for row, got in zip(rows, batched):
        want = encode(row, processor, small_synth, system_prompt=system_prompt, with_answer=False)
        assert got.keys() == want.keys(), row["id"]
        for key in want:
            assert torch.equal(got[key], want[key]), (row["id"], key)
    assert batched[-2]["image_grid_thw"].shape[0] == 2 and "pixel_values" not in batched[-1]
    bad = {**rows[0], "conversations": [{"from": "human", "value": "<image>\n<image>\nQ"}, rows[0]["conversations"][1]]}
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        encode_prompts([rows[1], bad], processor, small_synth)


@pytest.mark.parametrize("system_prompt", [None, "Answer with a single word or phrase."])
def test_answer_appended_to_the_prompt_equals_encoding_the_first_turn(processor, small_synth, system_prompt):
    """Evaluation's perplexity items, built from generation's encoded prompts without processing the images
    again, are the items encode gives the first question and answer."""
    rows = read_jsonl(small_synth / "test.jsonl")[:6]
    Image.new("RGB", (300, 170), color=(30, 90, 30)).save(small_synth / "answer_300x170.png")
    rows += [make_row("two", ["answer_300x170.png", rows[0]["image"]], "Compare the two images.", "the same"),
             make_row("text", None, "What does MRI stand for?", "magnetic resonance imaging")]
    multi = {**rows[1], "id": "multi", "conversations": [*rows[1]["conversations"],
                                                         {"from": "human", "value": "And the size?"},
                                                         {"from": "gpt", "value": "small"}]}
    rows.append(multi)
    prompts = encode_prompts(rows, processor, small_synth, system_prompt=system_prompt)
    for row, prompt in zip(rows, prompts):
        want = encode(first_turn(row), processor, small_synth, system_prompt=system_prompt)
        got = append_answer(prompt, row, processor, system_prompt=system_prompt)
        assert got.keys() == want.keys(), row["id"]
        for key in want:
            assert torch.equal(got[key], want[key]), (row["id"], key)
    assert (append_answer(prompts[-1], multi, processor)["labels"] != IGNORE_INDEX).sum() == len(
        processor.tokenizer(rows[1]["conversations"][1]["value"] + "<|im_end|>")["input_ids"])


def test_placeholder_image_mismatch_is_an_error(processor, small_synth):
    row = read_jsonl(small_synth / "test.jsonl")[0]
    bad = {**row, "conversations": [{"from": "human", "value": "<image>\n<image>\nQ"}, row["conversations"][1]]}
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        encode(bad, processor, small_synth)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_dynamically(processor, small_synth, side):
    rows = read_jsonl(small_synth / "test.jsonl")[:3]
    items = [encode(r, processor, small_synth) for r in rows]
    batch = Collator(processor.tokenizer.pad_token_id, padding_side=side)(items)
    width = max(len(it["input_ids"]) for it in items)
    assert batch["input_ids"].shape == (3, width)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        real = slice(0, n) if side == "right" else slice(width - n, width)
        assert torch.equal(batch["input_ids"][i, real], it["input_ids"])
        assert batch["attention_mask"][i].sum() == n
        assert torch.equal(batch["labels"][i, real], it["labels"])
    assert batch["pixel_values"].shape[0] == sum(it["pixel_values"].shape[0] for it in items)


def test_min_max_pixels_reach_the_processor(compose, tiny_dir):
    small = load_processor(compose(["model.min_pixels=3136", "model.max_pixels=3136"]).model)
    default = load_processor(compose([]).model)
    # 500x500 is resized to fit max_pixels: 56x56 -> 2x2 merged tokens; 112x112 -> 4x4.
    assert image_token_count(500, 500, small.image_processor) == 4
    assert image_token_count(500, 500, default.image_processor) == 16
    assert encode(make_row("r", "x.png", "q", "a"), small, ".", images=[Image.new("RGB", (500, 500))])[
        "image_grid_thw"].tolist() == [[1, 4, 4]]


#: A base checkpoint's chat template: the turns concatenated, images as their placeholders, no end-of-turn markup.
PLAIN_TEMPLATE = ("{% for message in messages %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
                  "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }} "
                  "{% endif %}{% endfor %}{% endfor %}")


def test_a_template_without_end_of_turn_ends_answers_with_end_of_sequence(tiny_dir, small_synth, caplog):
    """Concatenated turns leave the model nothing to stop on: each answer is labelled with the tokenizer's
    end-of-sequence token (generation stops on it), and the prompt pieces are still the template's own."""
    import copy
    import logging

    from transformers import AutoProcessor

    from medvl.data.chat import end_of_turn, segments, to_messages

    processor = copy.deepcopy(AutoProcessor.from_pretrained(tiny_dir))
    processor.chat_template = PLAIN_TEMPLATE
    eos = processor.tokenizer.eos_token
    with caplog.at_level(logging.WARNING, logger="medvl.data.chat"):
        assert end_of_turn(processor) == (eos, " ")
    assert "answers end with the tokenizer's end-of-sequence token" in caplog.text
    row = read_jsonl(small_synth / "train.jsonl")[0]
    multi = {**row, "conversations": row["conversations"] + [
        {"from": "human", "value": "And the modality?"}, {"from": "gpt", "value": "CT"}]}
    pieces = list(segments(to_messages(multi, None), processor))
    first = row["conversations"][1]["value"]
    assert [text for is_answer, text, _ in pieces if is_answer] == [first + eos, "CT" + eos]
    template = processor.apply_chat_template(to_messages(multi, None), tokenize=False)
    assert "".join(text for _, text, _ in pieces) == template.replace(f"{first} ", f"{first}{eos} ").replace(
        "CT ", f"CT{eos} ")
    assert labelled(encode(multi, processor, small_synth), processor) == f"{first}{eos}CT{eos}"


def test_a_template_that_renders_no_answer_is_one_line(tiny_dir):
    import copy

    from transformers import AutoProcessor

    from medvl.config import ConfigError
    from medvl.data.chat import end_of_turn

    processor = copy.deepcopy(AutoProcessor.from_pretrained(tiny_dir))
    processor.chat_template = "{% for message in messages %}{% if message['role'] == 'user' %}q{% endif %}{% endfor %}"
    with pytest.raises(ConfigError, match="^the model's chat template renders no assistant turn"):
        end_of_turn(processor)
