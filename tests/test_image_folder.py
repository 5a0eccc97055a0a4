from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from data_helpers import gradient_image, save
from PIL import Image

from liandan.data.image_folder import open_image, scan_image_folder
from liandan.errors import DatasetError


def _two_colour(size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (220, 20, 20))
    image.paste((20, 20, 220), (size[0] // 2, 0, size[0], size[1]))  # right half blue
    return image


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise
    save(_two_colour((40, 20)), folder / "rotated.jpg", exif=exif.tobytes(), quality=95)
    save(gradient_image((32, 32), "RGBA"), folder / "alpha.png")
    save(gradient_image((24, 16)), folder / "pic.webp", lossless=True)
    save(gradient_image((16, 24)), folder / "pic2.BMP")
    buffer = io.BytesIO()
    gradient_image((64, 64)).save(buffer, "PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "notes.png").write_text("this is text, not a picture")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "meta.json").write_text("{}")
    (folder / "rotated.txt").write_text("a caption")
    save(gradient_image((16, 16)), folder / "sub" / "deep" / "nested.png")
    return folder


def test_reads_usable_images_and_lists_each_skipped_file_with_its_reason(mixed_folder: Path) -> None:
    scan = scan_image_folder(mixed_folder)
    assert [r.path.name for r in scan.images] == ["alpha.png", "pic.webp", "pic2.BMP", "rotated.jpg"]
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert set(reasons) == {"truncated.png", "notes.png", "empty.jpg", "meta.json"}
    assert "truncated" in reasons["truncated.png"]
    assert "not an image" in reasons["notes.png"]
    assert reasons["empty.jpg"] == "empty file"
    assert "not an image file type" in reasons["meta.json"]
    report = scan.report()
    for name in reasons:
        assert name in report
    by_name = {r.path.name: r for r in scan.images}
    assert by_name["alpha.png"].has_alpha and not by_name["pic.webp"].has_alpha
    assert by_name["pic.webp"].size == (24, 16)


def test_exif_orientation_is_applied(mixed_folder: Path) -> None:
    record = next(r for r in scan_image_folder(mixed_folder).images if r.path.name == "rotated.jpg")
    assert record.size == (20, 40)
    image = open_image(record.path)
    assert image.size == (20, 40)
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 150 > top[2]  # the stored left (red) half is now on top
    assert bottom[2] > 150 > bottom[0]


def test_alpha_is_kept(mixed_folder: Path) -> None:
    image = open_image(mixed_folder / "alpha.png")
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] == 0 and image.getpixel((31, 0))[3] == 255


def test_palette_transparency_counts_as_alpha(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    save(image, tmp_path / "p.png", transparency=0)
    assert scan_image_folder(tmp_path).images[0].has_alpha


def test_recursive_finds_nested_images(mixed_folder: Path) -> None:
    names = [r.path.name for r in scan_image_folder(mixed_folder, recursive=True).images]
    assert "nested.png" in names and len(names) == 5


def test_sources_are_never_modified(mixed_folder: Path) -> None:
    def snapshot() -> dict[Path, tuple[str, int]]:
        return {
            p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in mixed_folder.rglob("*")
            if p.is_file()
        }

    before = snapshot()
    for record in scan_image_folder(mixed_folder, recursive=True).images:
        open_image(record.path)
    assert snapshot() == before


def test_content_hash_is_the_file_sha256(fixtures_dir: Path) -> None:
    scan = scan_image_folder(fixtures_dir / "train64")
    assert [r.path.name for r in scan.images] == ["img0.png", "img1.png", "img2.png", "img3.png"]
    assert scan.skipped == []  # the .txt captions are companions, not skipped files
    record = scan.images[0]
    assert record.content_hash == hashlib.sha256(record.path.read_bytes()).hexdigest()
    assert record.size == (64, 64)


def test_empty_or_unusable_folder_is_a_dataset_error_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=str(empty)):
        scan_image_folder(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("nope")
    save(gradient_image((8, 8)), bad / "sub" / "only_here.png")
    with pytest.raises(DatasetError, match=r"(?s)no usable image.*recursive.*x\.png: not an image"):
        scan_image_folder(bad)
    with pytest.raises(DatasetError, match="does not exist"):
        scan_image_folder(tmp_path / "missing")


def test_an_attention_map_beside_its_image_is_a_companion_not_an_image(tmp_path: Path) -> None:
    for name in ("cat.jpg", "cat_att.png", "lone_att.png"):
        _two_colour((16, 16)).save(tmp_path / name)
    scan = scan_image_folder(tmp_path)
    # lone_att.png has no image "lone.*" beside it: it is an image of its own
    assert sorted(r.path.name for r in scan.images) == ["cat.jpg", "lone_att.png"]
    assert not scan.skipped
