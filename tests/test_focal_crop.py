from __future__ import annotations

import cv2
import pytest
from PIL import Image, ImageDraw

from liandan.errors import ConfigError
from liandan.preprocess.batch import run_preprocess
from liandan.preprocess.focal_crop import (
    YUNET_FILE,
    FocalSettings,
    entropy,
    face_detector_problem,
    focal_crop,
    focal_point,
)
from liandan.preprocess.job import PreprocessJob


def _busy_right(width: int = 400, height: int = 100) -> Image.Image:
    """Flat grey, with a detailed checkerboard in the right quarter."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for x in range(width * 3 // 4, width, 6):
        for y in range(0, height, 6):
            if (x // 6 + y // 6) % 2:
                draw.rectangle([x, y, x + 5, y + 5], fill=(0, 0, 0))
            else:
                draw.rectangle([x, y, x + 5, y + 5], fill=(255, 255, 255))
    return image


def test_entropy_is_higher_for_detail() -> None:
    assert entropy(Image.new("L", (10, 10))) == 0.0
    assert entropy(_busy_right()) > 0.5


def test_crop_moves_to_the_detailed_part() -> None:
    for weights in [(0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.9, 0.15, 0.5)]:
        settings = FocalSettings(64, 64, *weights)
        crop, debug = focal_crop(_busy_right(), settings)
        assert crop.size == (64, 64) and debug is None
        left_of_crop = crop.getpixel((0, 32))
        point, _ = focal_point(_busy_right(256, 64), settings)
        assert point.x > 128, (weights, point)
        assert crop.getextrema()[0] != (128, 128), left_of_crop


def test_debug_image_and_small_input_upscaled() -> None:
    crop, debug = focal_crop(Image.new("RGB", (8, 8), "red"), FocalSettings(64, 32, debug_image=True))
    assert crop.size == (64, 32) and debug is not None and debug.size[0] >= 64


def test_opencv_without_cascade_classifier_is_refused_before_any_image(tmp_path, monkeypatch) -> None:
    """OpenCV 5 dropped CascadeClassifier: the batch says what to do instead of failing at the first image."""
    assert face_detector_problem(None) is None
    monkeypatch.delattr(cv2, "CascadeClassifier")
    problem = face_detector_problem(None)
    assert problem is not None and "opencv-python-headless>=4.8,<5" in problem
    yunet = tmp_path / YUNET_FILE
    yunet.write_bytes(b"onnx")
    assert face_detector_problem(yunet) is None  # YuNet finds faces without cascades

    source = tmp_path / "src"
    source.mkdir()
    Image.new("RGB", (80, 60), "red").save(source / "a.png")
    job = PreprocessJob(source=source, destination=tmp_path / "out", crop="focal", width=32, height=32)
    with pytest.raises(ConfigError, match="has no CascadeClassifier"):
        run_preprocess(job, tmp_path / "models")
    assert not (tmp_path / "out").exists()
    no_faces = PreprocessJob(source=source, destination=tmp_path / "out", crop="focal", width=32, height=32,
                             focal_face_weight=0.0)  # fmt: skip
    assert run_preprocess(no_faces, tmp_path / "models").processed == 1
