"""A tiny, randomly initialised BLIP captioning model saved with ``save_pretrained``.

Shapes follow transformers' own BLIP tests, shrunk; the tokenizer is a BERT WordPiece built in
memory from the demo world's words, so nothing touches the hub and every generated token is a
word. ``labels/vlm.py`` loads the folder by path exactly as it loads
``Salesforce/blip-image-captioning-large`` by hub id. Captions are random words; what the tests
check is the code path, the determinism and the lineage.
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
