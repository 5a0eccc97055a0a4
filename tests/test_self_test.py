"""Preview images and the with/without self-test sheet."""

from __future__ import annotations

from pathlib import Path

from helpers_toy_method import ToyMethod
from PIL import Image

from liandan.train.self_test import images_identical, run_self_test, save_preview, side_by_side


def test_side_by_side_sheet_has_both_images_and_labels() -> None:
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    sheet = side_by_side(red, blue)
    assert sheet.size == (64, 46)
    assert sheet.getpixel((10, 30)) == (255, 0, 0) and sheet.getpixel((50, 30)) == (0, 0, 255)
    label_band = sheet.crop((0, 0, 64, 14))
    assert any(px != (255, 255, 255) for px in label_band.getdata())  # the labels are drawn


def test_self_test_detects_an_artifact_that_changes_nothing(tmp_path: Path) -> None:
    working = run_self_test(ToyMethod(tmp_path), "p", 3, tmp_path / "images", step=10)
    assert not working.identical
    assert (
        working.path == tmp_path / "images" / "toy-10-selftest.png" and Image.open(working.path).width == 64
    )
    broken = run_self_test(ToyMethod(tmp_path, preview_ignores_artifact=True), "p", 3, tmp_path / "b", 10)
    assert broken.identical


def test_periodic_preview_file_and_reuse(tmp_path: Path) -> None:
    method = ToyMethod(tmp_path)
    path = save_preview(method, "p", 1, tmp_path / "images", 20)
    assert path.name == "toy-20.png" and method.previews == [("p", 1, True)]
    given = Image.new("RGB", (8, 8), "green")
    save_preview(method, "p", 1, tmp_path / "images", 30, image=given)
    assert len(method.previews) == 1  # the given render was reused
    assert images_identical(Image.open(tmp_path / "images" / "toy-30.png"), given)
