"""WD14 taggers (SmilingWolf wd-v1-4-*-v2 and wd-*-v3): `model.onnx` + `selected_tags.csv` on onnxruntime.

Input: NHWC float32 in 0-255, BGR, transparent areas white, padded to a white square, resized to the
model's input size (448 for all published ones). `selected_tags.csv` categories: 9 rating, 0 general,
4 character.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from liandan.errors import CheckpointError
from liandan.preprocess.image_ops import on_white
from liandan.preprocess.tag_format import TagFormat, filter_set, format_tag
from liandan.preprocess.weights import WeightFile, ensure_weights, hub_file

log = logging.getLogger(__name__)

RATING, GENERAL, CHARACTER = 9, 0, 4
WD14_MODELS = (
    "SmilingWolf/wd-swinv2-tagger-v3",
    "SmilingWolf/wd-vit-tagger-v3",
    "SmilingWolf/wd-convnext-tagger-v3",
    "SmilingWolf/wd-vit-large-tagger-v3",
    "SmilingWolf/wd-eva02-large-tagger-v3",
    "SmilingWolf/wd-v1-4-moat-tagger-v2",
    "SmilingWolf/wd-v1-4-swinv2-tagger-v2",
    "SmilingWolf/wd-v1-4-convnextv2-tagger-v2",
    "SmilingWolf/wd-v1-4-convnext-tagger-v2",
    "SmilingWolf/wd-v1-4-vit-tagger-v2",
)
WD14_FOLDER = "wd14_tagger"
# Emoticons whose underscores are part of the face, not word separators.
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
                     ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})  # fmt: skip


@dataclass(frozen=True)
class Wd14Options:
    model: str = WD14_MODELS[0]  # a repository name above, or a folder with model.onnx + selected_tags.csv
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    rating_tags: bool = False  # put the most likely rating first
    character_first: bool = True
    exclude_tags: str = ""
    use_spaces: bool = True
    escape_brackets: bool = True
    include_scores: bool = False


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


def read_tags_csv(path: Path) -> list[Tag]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise CheckpointError(f"{path}: expected a CSV with name and category columns (selected_tags.csv)")
    return [Tag(row["name"], int(row["category"])) for row in rows]


def weight_files(model: str) -> list[WeightFile]:
    """The files to fetch for `model`: none when it is a local folder."""
    if Path(model).is_dir():
        return []
    return [hub_file(model, name, WD14_FOLDER) for name in ("model.onnx", "selected_tags.csv")]


def model_files(model: str, models_dir: Path, allow_download: bool) -> tuple[Path, Path]:
    folder = Path(model)
    if folder.is_dir():
        onnx_path, csv_path = folder / "model.onnx", folder / "selected_tags.csv"
        for path in (onnx_path, csv_path):
            if not path.is_file():
                raise CheckpointError(
                    f"{path} is missing: a WD14 folder holds model.onnx and selected_tags.csv"
                )
        return onnx_path, csv_path
    onnx_path, csv_path = ensure_weights(weight_files(model), models_dir, allow_download)
    return onnx_path, csv_path


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("onnxruntime has no CUDA provider (%s): WD14 runs on the CPU", ", ".join(available))
    return ["CPUExecutionProvider"]


class Wd14Captioner:
    name = "wd14"

    def __init__(self, onnx_path: Path, tags: list[Tag], options: Wd14Options, device: str = "cpu") -> None:
        import onnxruntime as ort

        settings = ort.SessionOptions()
        settings.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), settings, providers=providers_for(device))
        except Exception as e:
            raise CheckpointError(f"{onnx_path}: onnxruntime cannot load this model ({e})") from e
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.size = int(model_input.shape[1])
        self.fixed_batch = isinstance(model_input.shape[0], int)
        outputs = int(self.session.get_outputs()[0].shape[-1])
        if outputs != len(tags):
            raise CheckpointError(
                f"{onnx_path}: the model has {outputs} outputs but the CSV lists {len(tags)} tags"
            )
        self.tags = tags
        self.options = options

    @classmethod
    def load(cls, options: Wd14Options, models_dir: Path, device: str = "cpu", allow_download: bool = True):
        onnx_path, csv_path = model_files(options.model, models_dir, allow_download)
        return cls(onnx_path, read_tags_csv(csv_path), options, device)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        rgb = on_white(image)
        side = max(rgb.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        square = square.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB → BGR

    def scores(self, images: list[Image.Image]) -> np.ndarray:
        batch = np.ascontiguousarray(np.stack([self.preprocess(im) for im in images]))
        if self.fixed_batch:
            rows = [
                self.session.run(None, {self.input_name: batch[i : i + 1]})[0] for i in range(len(images))
            ]
            return np.concatenate(rows)
        return self.session.run(None, {self.input_name: batch})[0]

    def caption_from_scores(self, scores: np.ndarray) -> str:
        o = self.options
        fmt = TagFormat(
            use_spaces=o.use_spaces, escape_brackets=o.escape_brackets, include_scores=o.include_scores
        )
        excluded = filter_set(o.exclude_tags)
        by_category: dict[int, list[tuple[str, float]]] = {RATING: [], GENERAL: [], CHARACTER: []}
        for tag, score in zip(self.tags, scores.tolist()):
            if tag.category in by_category and tag.name.replace(" ", "_") not in excluded:
                by_category[tag.category].append((tag.name, score))
        general = [t for t in by_category[GENERAL] if t[1] >= o.general_threshold]
        character = [t for t in by_category[CHARACTER] if t[1] >= o.character_threshold]
        general.sort(key=lambda t: -t[1])
        character.sort(key=lambda t: -t[1])
        chosen = character + general if o.character_first else general + character
        if o.rating_tags and by_category[RATING]:
            chosen.insert(0, max(by_category[RATING], key=lambda t: t[1]))
        return ", ".join(self._format(name, score, fmt) for name, score in chosen)

    @staticmethod
    def _format(name: str, score: float, fmt: TagFormat) -> str:
        if name in KAOMOJI:
            fmt = TagFormat(
                use_spaces=False, escape_brackets=fmt.escape_brackets, include_scores=fmt.include_scores
            )
        return format_tag(name, score, fmt)

    def caption(self, images: list[Image.Image]) -> list[str]:
        return [self.caption_from_scores(row) for row in self.scores(images)]
