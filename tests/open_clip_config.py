"""An open_clip model config (the JSON of open_clip's `model_configs`) for a tiny OpenCLIP text tower."""

from __future__ import annotations


def open_clip_config(text: dict) -> dict:
    """open_clip's config of the tower whose transformers-style config is `text`, with a token vision tower
    (the WebUI's embedders delete it after building the model). open_clip 2.20 takes no MLP width for a text
    tower: it is always 4 times the width."""
    return {
        "embed_dim": text["projection_dim"],
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 64, "patch_size": 16},
        "text_cfg": {
            "context_length": text["max_position_embeddings"],
            "vocab_size": text["vocab_size"],
            "width": text["hidden_size"],
            "heads": text["num_attention_heads"],
            "layers": text["num_hidden_layers"],
        },
    }
