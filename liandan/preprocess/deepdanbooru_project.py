"""DeepDanbooru projects (project.json + tags.txt + the Keras model) through the `deepdanbooru` package.

An optional extra: TensorFlow is never installed for the user; without it the error says what to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from liandan.errors import ConfigError
from liandan.preprocess.image_ops import on_white
from liandan.preprocess.tag_format import TagFormat, select_tags, tags_to_caption


def extra_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("deepdanbooru", "tensorflow"))


def fit_and_pad(image: Image.Image, width: int, height: int) -> np.ndarray:
    """deepdanbooru's evaluation input: fit inside W×H keeping the aspect, zero padding, [0, 1] floats."""
    rgb = on_white(image)
    scale = min(width / rgb.width, height / rgb.height)
    fitted = rgb.resize(
        (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BOX
    )
    canvas = Image.new("RGB", (width, height))
    canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255.0


class DeepDanbooruProjectCaptioner:
    name = "deepdanbooru"

    def __init__(self, project: Path, fmt: TagFormat) -> None:
        if not (project / "project.json").is_file():
            raise ConfigError(f"{project}: not a DeepDanbooru project (no project.json)")
        if not extra_available():
            raise ConfigError(
                "DeepDanbooru projects need the optional packages deepdanbooru and tensorflow "
                "(pip install deepdanbooru tensorflow); or use the built-in deepbooru captioner"
            )
        import deepdanbooru

        self.model = deepdanbooru.project.load_model_from_project(str(project), compile_model=False)
        self.tags = list(deepdanbooru.project.load_tags_from_project(str(project)))
        _, self.height, self.width, _ = self.model.input_shape
        self.fmt = fmt

    def caption(self, images: list[Image.Image]) -> list[str]:
        batch = np.stack([fit_and_pad(im, self.width, self.height) for im in images])
        rows = np.asarray(self.model.predict(batch, verbose=0))
        out = []
        for row in rows:
            scores = dict(zip(self.tags, row.tolist()))
            out.append(tags_to_caption(select_tags(scores, self.fmt), scores, self.fmt))
        return out
