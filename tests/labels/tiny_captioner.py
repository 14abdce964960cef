"""Tiny, randomly initialised image-to-text models saved with ``save_pretrained``: a BLIP
captioning model (no chat template) and a LLaVA chat model (a chat template).

Shapes follow transformers' own tests, shrunk; the tokenizers are BERT WordPieces built in
memory from the demo world's words, so nothing touches the hub and every generated token is a
word. ``labels/vlm.py`` loads the folders by path exactly as it loads
``Salesforce/blip-image-captioning-large`` or ``llava-hf/...`` by hub id. Captions are random
words; what the tests check is the code path, the determinism and the lineage.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from blindspot_assets.demo.world import BACKGROUNDS, COLORS, SHAPES

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = [*COLORS, *SHAPES, *BACKGROUNDS, "background", "a", "picture", "of", "on", "and"]
HIDDEN = 32


def save_tiny_blip(path: Path, seed: int = 0) -> Path:
    vocab = {w: i for i, w in enumerate([*SPECIALS, *dict.fromkeys(WORDS)])}
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=32, bos_token="[DEC]")
    text = {
        "vocab_size": len(vocab),
        "hidden_size": HIDDEN,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 64,
        "encoder_hidden_size": HIDDEN,
        "bos_token_id": vocab["[DEC]"],
        "pad_token_id": vocab["[PAD]"],
        "sep_token_id": vocab["[SEP]"],
        "eos_token_id": vocab["[SEP]"],
    }
    vision = {
        "hidden_size": HIDDEN,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(
        BlipConfig(text_config=text, vision_config=vision, projection_dim=HIDDEN)
    )
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# One user turn: the image, then the instruction; the answer follows "ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %} ASSISTANT:{% endfor %}"
)


def save_tiny_llava(path: Path, seed: int = 0) -> Path:
    """A LLaVA-shaped chat VLM: CLIP vision tower (2 × 2 patches), tiny Llama, chat template."""
    words = ["<image>", "user", ":", "assistant", *dict.fromkeys(WORDS)]
    vocab = {w: i for i, w in enumerate([*SPECIALS[:5], *words])}
    tokenizer = BertTokenizer(
        vocab=vocab, model_max_length=64, extra_special_tokens={"image_token": "<image>"}
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=28,
        patch_size=14,
    )
    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=2,
        pad_token_id=vocab["[PAD]"],
        bos_token_id=vocab["[CLS]"],
        eos_token_id=vocab["[SEP]"],
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=vocab["<image>"],
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
        )
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
