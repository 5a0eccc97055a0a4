"""A corpus of awkward files, generated here: each is processed or skipped with a reason; nothing crashes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from hostile_corpus import png_claiming
from PIL import Image
from preprocess_models import make_deepbooru_file

from liandan.preprocess.batch import run_preprocess
from liandan.preprocess.job import PreprocessJob

EXPECTED_SKIPS = {
    "truncated.png": "truncated or corrupt",
    "truncated.jpg": "truncated or corrupt",
    "zero.png": "empty file",
    "text.png": "not an image",
    "bomb.png": "decompression bomb",
}


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def make_corpus(folder: Path) -> None:
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    photo = Image.fromarray(noise, "RGB")  # noise: the encoded data is long, so half of it is truncated
    png, jpeg = _encoded(photo, "PNG"), _encoded(photo, "JPEG")
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.png").write_text("this is a text file")
    (folder / "bomb.png").write_bytes(png_claiming(20000, 20000))
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(folder / "cmyk.jpg")  # red in CMYK
    Image.fromarray(np.full((16, 16), 30000, dtype=np.uint16)).save(folder / "sixteen.png")  # 16-bit grey
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(0, (0, 0, 8, 16))
    palette.save(folder / "palette.png", transparency=0)
    red, blue = Image.new("RGB", (20, 20), "red"), Image.new("RGB", (20, 20), "blue")
    red.save(folder / "anim.gif", save_all=True, append_images=[blue], duration=100, loop=0)
    red.save(folder / "anim.webp", save_all=True, append_images=[blue], duration=100, lossless=True)
    stored = Image.new("RGB", (40, 20), "red")
    stored.paste((0, 0, 255), (0, 10, 40, 20))  # stored: red top, blue bottom
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: red lands on the right
    stored.save(folder / "exif.jpg", exif=exif.tobytes(), quality=95)
    Image.new("RGB", (10000, 10000), "white").save(folder / "huge.png")
    Image.new("RGB", (8, 8), "yellow").save(folder / "tiny.png")
    Image.new("RGB", (30, 30), "gray").save(folder / "画像 [1], (final) copy.png")


@pytest.mark.slow
def test_every_awkward_file_is_processed_or_skipped_with_a_reason(tmp_path) -> None:
    source = tmp_path / "corpus"
    make_corpus(source)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()}
    models = tmp_path / "models"
    make_deepbooru_file(models / "torch_deepdanbooru" / "model-resnet_custom_v3.pt", ["a", "b"])
    job = PreprocessJob(source=source, destination=tmp_path / "out", width=32, height=32,
                        captioners=("deepbooru",), flip="horizontal")  # fmt: skip
    summary = run_preprocess(job, models)

    skipped = {p.name: reason for p, reason in summary.skipped}
    assert set(skipped) == set(EXPECTED_SKIPS)
    for name, why in EXPECTED_SKIPS.items():
        assert why in skipped[name] and name in skipped[name]
    assert summary.processed == len(before) - len(EXPECTED_SKIPS)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()} == before

    out = tmp_path / "out"

    def pixel(name: str, xy: tuple[int, int]) -> tuple[int, ...]:
        with Image.open(out / name) as im:
            assert im.size == (32, 32)
            return im.getpixel(xy)

    assert pixel("cmyk.png", (16, 16))[:3] == (255, 0, 0)
    assert 100 < pixel("sixteen.png", (16, 16))[0] < 130  # 30000/65535 of white, not clipped
    assert pixel("palette.png", (2, 16))[3] == 0 and pixel("palette.png", (30, 16))[:3] == (0, 255, 0)
    # anim.gif and anim.webp share a stem: the second gets "-2" instead of overwriting the first
    assert pixel("anim.png", (16, 16))[:3] == (255, 0, 0) and pixel("anim-2.png", (16, 16))[:3] == (255, 0, 0)
    assert pixel("exif.png", (4, 16))[2] > 200  # upright: blue on the left
    assert pixel("huge.png", (16, 16)) == (255, 255, 255)
    assert pixel("tiny.png", (16, 16)) == (255, 255, 0)
    assert pixel("画像 [1], (final) copy-flip-h.png", (16, 16)) == (128, 128, 128)
    assert (out / "画像 [1], (final) copy.txt").read_text(encoding="utf-8") == "a"
