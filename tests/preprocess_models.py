"""Tiny random-weight models of the real captioner architectures, built by the preprocess tests and bench."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

# name, category (9 rating, 0 general, 4 character), score the tiny WD14 model gives every image
WD14_TAGS = (
    ("general", 9, 0.9),
    ("sensitive", 9, 0.1),
    ("1girl", 0, 0.8),
    ("solo", 0, 0.5),
    ("hat", 0, 0.2),
    ("^_^", 0, 0.7),
    ("long_(hair)", 0, 0.6),
    ("hatsune_miku", 4, 0.9),
    ("other_character", 4, 0.6),
)


def make_deepbooru_file(path: Path, tags: list[str], width_divisor: int = 16, seed: int = 0) -> Path:
    """A model-resnet_custom_v3.pt-shaped file. Tag i's head row is +1 for even i, -1 for odd i: features
    after ReLU are positive, so even tags score above 0.5 and odd tags below, whatever the image."""
    from liandan.preprocess.deepbooru import DeepDanbooruModel

    torch.manual_seed(seed)
    model = DeepDanbooruModel(tags, width_divisor=width_divisor)
    head = model.head[0].weight
    with torch.no_grad():
        for i in range(len(tags)):
            head[i].fill_(0.05 if i % 2 == 0 else -0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict_with_tags(), path)
    return path


class _TinyTagger(torch.nn.Module):
    """NHWC 0-255 BGR in, sigmoid scores out: fixed per-tag scores nudged by the image brightness."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        logits = torch.logit(torch.tensor(scores))
        self.bias = torch.nn.Parameter(logits)
        self.scale = torch.nn.Parameter(torch.full((len(scores),), 1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        brightness = x.mean(dim=(1, 2, 3)) / 255.0
        return torch.sigmoid(self.bias + brightness[:, None] * self.scale)


def make_wd14_folder(folder: Path, size: int = 32, batch_dim_fixed: bool = False) -> Path:
    """model.onnx (exported from a tiny torch module, dynamic batch) + selected_tags.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    model = _TinyTagger([score for _, _, score in WD14_TAGS]).eval()
    example = torch.zeros(1, size, size, 3)
    axes = None if batch_dim_fixed else {"input_1": {0: "batch"}, "predictions": {0: "batch"}}
    torch.onnx.export(
        model, (example,), str(folder / "model.onnx"), input_names=["input_1"],
        output_names=["predictions"], dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip
    with (folder / "selected_tags.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category, _) in enumerate(WD14_TAGS):
            writer.writerow([i, name, category, 100])
    return folder


def make_blip_folder(folder: Path, seed: int = 0) -> Path:
    """A transformers BLIP captioning folder with tiny random weights and a 40-word BERT vocabulary."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + [f"w{i}" for i in range(34)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    text = {"vocab_size": len(words), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 37, "encoder_hidden_size": 32, "bos_token_id": 5, "pad_token_id": 0,
            "sep_token_id": 3, "max_position_embeddings": 64}  # fmt: skip
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(
        BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
