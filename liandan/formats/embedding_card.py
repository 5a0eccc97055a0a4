"""Embedding cards: PNG/WebP images carrying an A1111 embedding, byte-for-byte A1111 v1.10.1's scheme.

The embedding dict (A1111's `.pt` content) is stored twice:
1. a PNG text chunk `sd-ti-embedding` = base64 of JSON, tensors as `{"TORCHTENSOR": nested list}`;
2. hidden in two coloured blocks left and right of the picture, so it survives chunk stripping: the JSON is
   zlib-compressed (level 9), split into low and high nibbles, each half laid out as an (h, w, 3) block,
   decorated with a dot pattern in the high nibble (shades from the first vector) and XOR-ed with an LCG
   mask in the low nibble; the blocks sit either side of the picture, each behind a 1-px black column.
Readers take the chunk first, else the blocks. The caption (title and footers) is cosmetic.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from liandan.atomic_files import write_bytes_atomic
from liandan.errors import FormatError

CHUNK_KEY = "sd-ti-embedding"
CARD_SUFFIXES = (".png", ".webp")
_CHANNELS = 3
_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:/Windows/Fonts/arial.ttf",
)


class _TensorEncoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return {"TORCHTENSOR": o.detach().cpu().numpy().tolist()}
        return super().default(o)


def _decode_tensors(obj: dict[str, Any]) -> Any:
    if "TORCHTENSOR" in obj:
        return torch.from_numpy(np.array(obj["TORCHTENSOR"]))
    return obj


def data_to_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, cls=_TensorEncoder)


def data_from_json(text: str | bytes) -> dict[str, Any]:
    return json.loads(text, object_hook=_decode_tensors)


def data_to_b64(data: Mapping[str, Any]) -> bytes:
    return base64.b64encode(data_to_json(data).encode())


def data_from_b64(text: str | bytes) -> dict[str, Any]:
    return data_from_json(base64.b64decode(text))


def _lcg_mask(shape: tuple[int, ...]) -> np.ndarray:
    """A1111's fixed pseudo-random sequence: LCG (a=1664525, c=1013904223, m=2^32, seed 0) mod 255."""
    count = math.prod(shape)
    values = np.empty(count, dtype=np.uint8)
    seed = 0
    for i in range(count):
        seed = (1664525 * seed + 1013904223) % 2**32
        values[i] = seed % 255
    return values.reshape(shape)


def _xor_lcg(block: np.ndarray) -> np.ndarray:
    return np.bitwise_xor(block.astype(np.uint8), _lcg_mask(block.shape) & 0x0F)


def _dot_pattern(block: np.ndarray, shades: np.ndarray) -> np.ndarray:
    """XOR the block's high nibble with a staggered grid of 6-px dots whose greys cycle through `shades`."""
    height, width = block.shape[:2]
    pattern = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(pattern)
    i = 0
    for x in range(-6, width, 8):
        for row, y in enumerate(range(-6, height, 8)):
            offset = 4 if row % 2 == 0 else 0
            shade = int(shades[i % len(shades)])
            i += 1
            draw.ellipse((x + offset, y, x + 6 + offset, y + 6), fill=(shade, shade, shade))
    return block ^ (np.array(pattern).astype(np.uint8) & 0xF0)


def _first_vector_shades(data: Mapping[str, Any]) -> np.ndarray:
    first = next(iter(data["string_to_param"].values()))
    values = np.abs(np.asarray(first.detach().cpu().float().numpy().tolist()[0][:1024]))
    peak = values.max() if values.size else 0.0
    if peak == 0:  # an all-zero first vector (no init text): A1111 divides by zero here; use black dots
        return np.zeros(max(values.size, 1), dtype=np.uint8)
    return (values / peak * 255).astype(np.uint8)


def _nibble_block(nibbles: np.ndarray, height: int) -> np.ndarray:
    # A1111 pads to a multiple of height*3 (always adding at least one more row and column) by repeating
    # the data cyclically (np.resize); zlib ignores whatever follows the end of its stream.
    size = len(nibbles) + (height - len(nibbles) % height)
    size += height * _CHANNELS - size % (height * _CHANNELS)
    return np.resize(nibbles, size).reshape((height, -1, _CHANNELS))


def insert_data_blocks(image: Image.Image, data: Mapping[str, Any]) -> Image.Image:
    """The picture framed by the two data blocks, as A1111's `insert_image_data_embed` lays it out."""
    compressed = np.frombuffer(zlib.compress(data_to_json(data).encode(), level=9), np.uint8)
    shades = _first_vector_shades(data)
    height = image.size[1]
    low = _xor_lcg(_dot_pattern(_nibble_block(compressed & 0x0F, height), shades))
    high = _xor_lcg(_dot_pattern(_nibble_block(compressed >> 4, height), shades[::-1]))
    low_image, high_image = Image.fromarray(low, mode="RGB"), Image.fromarray(high, mode="RGB")

    width = low_image.size[0] + 1 + image.size[0] + 1 + high_image.size[0]
    card = Image.new("RGB", (width, height), (0, 0, 0))
    card.paste(low_image, (0, 0))
    card.paste(image.convert("RGB"), (low_image.size[0] + 1, 0))
    card.paste(high_image, (low_image.size[0] + 1 + image.size[0] + 1, 0))
    return card


def _crop_black(pixels: np.ndarray) -> np.ndarray:
    lit = (pixels > 0).all(2)
    cols, rows = lit.any(0), lit.any(1)
    if not cols.any():
        return pixels[:0, :0]
    col_start, col_end = cols.argmax(), lit.shape[1] - cols[::-1].argmax()
    row_start, row_end = rows.argmax(), lit.shape[0] - rows[::-1].argmax()
    return pixels[row_start:row_end, col_start:col_end]


def extract_data_blocks(image: Image.Image) -> dict[str, Any] | None:
    """The embedding hidden in a card's blocks, or None when the image carries none."""
    pixels = np.array(image.convert("RGB"), dtype=np.uint8)
    nibbles = _crop_black(pixels) & 0x0F
    black_columns = np.where(nibbles.sum(axis=(0, 2)) == 0)[0]
    if black_columns.shape[0] < 2:
        return None
    low = _xor_lcg(nibbles[:, : black_columns.min(), :])
    high = _xor_lcg(nibbles[:, black_columns.max() + 1 :, :])
    try:
        return data_from_json(zlib.decompress(((high << 4) | low).flatten().tobytes()))
    except (zlib.error, UnicodeDecodeError, ValueError):
        return None


def find_font() -> str | None:
    """A TrueType font available offline: the system's DejaVu/Liberation, else matplotlib's bundled DejaVu."""
    for candidate in _FONT_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if bundled.is_file():
            return str(bundled)
    return None


def caption_overlay(
    image: Image.Image,
    title: str,
    footer_left: str,
    footer_mid: str,
    footer_right: str,
    font_path: str | None,
) -> Image.Image:
    """A1111's caption: dark gradients top and bottom, the title top-left, three footers along the bottom."""
    width, height = image.size
    gradient = Image.new("RGBA", (1, height), color=(0, 0, 0, 0))
    for y in range(height):
        magnitude = max(1 - math.cos(y / height * 1.5), 1 - math.cos((height - y) / height * 1.5 * 1.1))
        gradient.putpixel((0, y), (0, 0, 0, int(magnitude * 255)))
    captioned = Image.alpha_composite(image.convert("RGBA"), gradient.resize(image.size))
    if font_path is None:
        return captioned  # no TrueType font on this machine: the text is cosmetic, the data is not

    draw = ImageDraw.Draw(captioned)
    padding, white = 10, (255, 255, 255, 230)

    def text_width(text: str, size: int) -> int:
        return max(draw.textbbox((0, 0), text, font=ImageFont.truetype(font_path, size))[2], 1)

    size = max(min(int(32 * (width * 0.75 - padding * 4) / text_width(title, 32)), 72), 1)
    draw.text((padding, padding), title, anchor="lt", font=ImageFont.truetype(font_path, size), fill=white)
    footers = (footer_left, footer_mid, footer_right)
    footer_size = max(
        min(min(int(size * (width / 3 - padding) / text_width(t, size)), 72) for t in footers), 1
    )
    font = ImageFont.truetype(font_path, footer_size)
    draw.text((padding, height - padding), footer_left, anchor="ls", font=font, fill=white)
    draw.text((width / 2, height - padding), footer_mid, anchor="ms", font=font, fill=white)
    draw.text((width - padding, height - padding), footer_right, anchor="rs", font=font, fill=white)
    return captioned


def write_card(
    path: str | os.PathLike[str],
    image: Image.Image,
    data: Mapping[str, Any],
    footers: tuple[str, str, str],
    font_path: str | None = None,
) -> Path:
    """Write an embedding card (atomically). `data` is A1111's embedding dict (string_to_param, name, ...).

    PNG gets the text chunk and the blocks; WebP (lossless) only the blocks, as A1111 reads no WebP chunks.
    """
    path = Path(path)
    if path.suffix.lower() not in CARD_SUFFIXES:
        raise FormatError(f"{path}: embedding cards are {' or '.join(CARD_SUFFIXES)} files")
    title = f"<{data.get('name', '???')}>"
    captioned = caption_overlay(image, title, *footers, font_path=font_path or find_font())
    card = insert_data_blocks(captioned, data)
    buffer = io.BytesIO()
    if path.suffix.lower() == ".png":
        info = PngImagePlugin.PngInfo()
        info.add_text(CHUNK_KEY, data_to_b64(data))
        card.save(buffer, "PNG", pnginfo=info)
    else:
        card.save(buffer, "WEBP", lossless=True, quality=100)
    return write_bytes_atomic(path, buffer.getvalue())


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The embedding dict of a card: from its text chunk if present, else from its data blocks."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            chunk = getattr(image, "text", {}).get(CHUNK_KEY)
            if chunk is not None:
                return data_from_b64(chunk)
            data = extract_data_blocks(image)
    except (OSError, ValueError) as error:
        raise FormatError(f"{path}: not a readable embedding card ({error})") from error
    if data is None:
        raise FormatError(f"{path}: this image carries no embedding (no '{CHUNK_KEY}' chunk, no data blocks)")
    return data
