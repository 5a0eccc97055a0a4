"""Auto focal-point crop: scale the image to cover W×H, then crop around a weighted point of interest.

Three detectors vote, each reduced to its centroid and weighted (A1111 defaults: faces 0.9, entropy 0.15,
edges 0.5): faces (OpenCV YuNet when its model file is in models/opencv, else Haar cascades), the most
detailed window (greyscale entropy) and corners (`goodFeaturesToTrack`). Without OpenCV only entropy votes.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
HAAR_CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_profileface.xml")


@dataclass(frozen=True)
class FocalSettings:
    width: int = 512
    height: int = 512
    face_weight: float = 0.9
    entropy_weight: float = 0.15
    edges_weight: float = 0.5
    debug_image: bool = False
    yunet_model: Path | None = None  # models/opencv/face_detection_yunet_2023mar.onnx when present


@dataclass(frozen=True)
class Point:
    x: float
    y: float


def has_opencv() -> bool:
    return importlib.util.find_spec("cv2") is not None


def face_detector_problem(yunet_model: Path | None) -> str | None:
    """Why the installed OpenCV cannot find faces, and what to do; None when it can (or when there is no
    OpenCV at all, where only entropy votes)."""
    if not has_opencv() or (yunet_model is not None and yunet_model.is_file()):
        return None
    import cv2

    if hasattr(cv2, "CascadeClassifier"):
        return None
    return (
        f"the focal-point crop cannot find faces: OpenCV {cv2.__version__} has no CascadeClassifier (5.0 "
        f'dropped it); install OpenCV 4 (pip install "opencv-python-headless>=4.8,<5"), put {YUNET_FILE} '
        f"in models/opencv/, or set the face weight to 0"
    )


def face_points(image: Image.Image, yunet_model: Path | None) -> list[Point]:
    """Centres of detected faces (a third of the way down the box: where eyes are)."""
    if not has_opencv():
        return []
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    if yunet_model is not None and yunet_model.is_file():
        detector = cv2.FaceDetectorYN.create(
            str(yunet_model), "", (image.width, image.height), 0.9, 0.3, 5000
        )
        _, faces = detector.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        boxes = [] if faces is None else [face[:4] for face in faces]
    else:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        min_side = max(1, int(min(image.size) * 0.05))
        boxes = []
        for name in HAAR_CASCADES:
            classifier = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / name))
            found = classifier.detectMultiScale(grey, 1.1, 7, minSize=(min_side, min_side))
            if len(found):
                boxes = list(found)
                break
    return [Point(x + w * 0.5, y + h * 0.33) for x, y, w, h in boxes]


def corner_points(image: Image.Image) -> list[Point]:
    if not has_opencv():
        return []
    import cv2

    grey = image.convert("L")
    # Grey out the bottom tenth so corners of a watermark do not pull the crop down.
    ImageDraw.Draw(grey).rectangle([0, grey.height * 0.9, grey.width, grey.height], fill=153)
    found = cv2.goodFeaturesToTrack(
        np.asarray(grey), maxCorners=100, qualityLevel=0.04, minDistance=min(grey.size) * 0.06
    )
    return [] if found is None else [Point(float(x), float(y)) for x, y in found.reshape(-1, 2)]


def entropy(image: Image.Image) -> float:
    histogram = np.asarray(image.convert("L").histogram(), dtype=np.float64)
    p = histogram[histogram > 0] / histogram.sum()
    return float(-(p * np.log2(p)).sum())


def entropy_point(image: Image.Image, width: int, height: int) -> list[Point]:
    """Centre of the crop window, slid along the long side, with the most detail."""
    slide = image.width - width if image.width > width else image.height - height
    if slide <= 0:
        return []
    step = max(4, slide // 64)
    horizontal = image.width > width
    best, best_offset = -1.0, 0
    for offset in range(0, slide + 1, step):
        box = (offset, 0, offset + width, height) if horizontal else (0, offset, width, offset + height)
        value = entropy(image.crop(box))
        if value > best:
            best, best_offset = value, offset
    if horizontal:
        return [Point(best_offset + width / 2, height / 2)]
    return [Point(width / 2, best_offset + height / 2)]


def _centroid(points: list[Point]) -> Point:
    return Point(sum(p.x for p in points) / len(points), sum(p.y for p in points) / len(points))


def focal_point(image: Image.Image, settings: FocalSettings) -> tuple[Point, dict[str, Point]]:
    """The weighted average of each detector's centroid; the image centre if none found anything."""
    votes: dict[str, tuple[list[Point], float]] = {}
    if settings.face_weight > 0:
        votes["face"] = (face_points(image, settings.yunet_model), settings.face_weight)
    if settings.entropy_weight > 0:
        votes["entropy"] = (entropy_point(image, settings.width, settings.height), settings.entropy_weight)
    if settings.edges_weight > 0:
        votes["edges"] = (corner_points(image), settings.edges_weight)
    centroids = {name: _centroid(points) for name, (points, _) in votes.items() if points}
    total = sum(votes[name][1] for name in centroids)
    if not centroids or total == 0:
        return Point(image.width / 2, image.height / 2), centroids
    x = sum(c.x * votes[name][1] for name, c in centroids.items()) / total
    y = sum(c.y * votes[name][1] for name, c in centroids.items()) / total
    return Point(x, y), centroids


def focal_crop(image: Image.Image, settings: FocalSettings) -> tuple[Image.Image, Image.Image | None]:
    """The W×H crop, and a debug image (detector centroids and the crop box) when asked for."""
    scale = max(settings.width / image.width, settings.height / image.height)
    scaled_size = (
        max(settings.width, round(image.width * scale)),
        max(settings.height, round(image.height * scale)),
    )
    scaled = image.resize(scaled_size, Image.Resampling.LANCZOS)
    point, centroids = focal_point(scaled, settings)

    left = int(min(max(point.x - settings.width / 2, 0), scaled.width - settings.width))
    top = int(min(max(point.y - settings.height / 2, 0), scaled.height - settings.height))
    box = (left, top, left + settings.width, top + settings.height)
    crop = scaled.crop(box)
    if not settings.debug_image:
        return crop, None
    debug = scaled.convert("RGB")
    draw = ImageDraw.Draw(debug)
    colours = {"face": "#f00", "entropy": "#ff0", "edges": "#00f"}
    radius = min(scaled.size) * 0.03
    for name, c in centroids.items():
        draw.ellipse([c.x - radius, c.y - radius, c.x + radius, c.y + radius], outline=colours[name], width=3)
    draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline="#0f0", width=3)
    return crop, debug
