"""Open any picture a user may drop in a dataset folder, and the simple operations: resize, flip, save.

`open_image` turns every odd file (truncated, empty, a text file named .png, a decompression bomb, CMYK,
16-bit, palette with transparency, animated, EXIF-rotated) into either a clean RGB/RGBA image or an
`ImageSkipped` error whose message says why, so a batch never crashes on one bad file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from liandan.atomic_files import write_bytes_atomic
from liandan.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
ResizeMode = Literal["none", "stretch", "crop", "fill"]
FlipMode = Literal["none", "horizontal", "vertical", "both"]
OutputFormat = Literal["png", "jpg", "webp"]


class ImageSkipped(DatasetError):
    """One input file cannot be used; the batch goes on and lists the reason in its summary."""


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def open_image(path: Path) -> Image.Image:
    """Decode `path` fully (first frame of animations), upright, in RGB or RGBA mode."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageSkipped(f"{path.name}: cannot read ({e.strerror})") from e
    if size == 0:
        raise ImageSkipped(f"{path.name}: empty file (0 bytes)")
    try:
        # Between Pillow's limit and twice it Pillow only warns: a 10000×10000 photo is legitimate.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.seek(0)  # animated GIF/WebP: the first frame
                im.load()
                image = ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as e:
        raise ImageSkipped(f"{path.name}: too many pixels, refused as a decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageSkipped(f"{path.name}: not an image Pillow can read (wrong extension or corrupt)") from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated data, broken chunks
        raise ImageSkipped(f"{path.name}: truncated or corrupt image ({e})") from e
    return to_rgb_or_rgba(image)


def to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the picture has transparency (kept for alpha-weighted training)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit greyscale: a plain convert("RGB") clips everything above 255 to white.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode != "F" else max(float(values.max()), 1.0)
        grey = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if has_alpha:
        return image.convert("RGBA")
    return image.convert("RGB")


def on_white(image: Image.Image) -> Image.Image:
    """RGB for the captioners: transparent areas become white (what the taggers were trained on)."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    background = Image.new("RGB", image.size, (255, 255, 255))
    background.paste(image, mask=image.getchannel("A"))
    return background


def resize(image: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """A1111's resize modes: stretch ("just resize"), crop ("crop and resize"), fill ("resize and fill")."""
    if mode == "none":
        return image
    if mode == "stretch":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if mode == "crop":
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    # fill: fit inside, then stretch the edge rows/columns into the empty bands (no black borders)
    scale = min(width / image.width, height / image.height)
    inner = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
    )
    canvas = Image.new(image.mode, (width, height))
    x0, y0 = (width - inner.width) // 2, (height - inner.height) // 2
    canvas.paste(inner.resize((width, height), Image.Resampling.BILINEAR))
    canvas.paste(inner, (x0, y0))
    return canvas


def flipped_copies(image: Image.Image, mode: FlipMode) -> list[tuple[str, Image.Image]]:
    """(name suffix, image) for each flipped copy asked for; the original is not included."""
    copies = []
    if mode in ("horizontal", "both"):
        copies.append(("flip-h", ImageOps.mirror(image)))
    if mode in ("vertical", "both"):
        copies.append(("flip-v", ImageOps.flip(image)))
    return copies


def save_image(image: Image.Image, target: Path, fmt: OutputFormat) -> Path:
    """Encode in memory, then write atomically: a crash never leaves half a file."""
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG")
    elif fmt == "jpg":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="WEBP", quality=95)
    return write_bytes_atomic(target, buffer.getvalue())
