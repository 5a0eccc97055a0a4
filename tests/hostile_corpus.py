"""The hostile-input corpus: awkward and broken inputs, each made here and each with its expected outcome.

A case writes its input under a folder and returns what to check; `outcome(case, folder)` runs it through
the code a user's input meets (dataset scan and decode, artifact readers, job specs and files, a training
step) and says what happened:
- "used": the input was accepted and worked,
- "skipped": a dataset file was left out, with the reason in the dataset report,
- "error": refused with our own error (a `LiandanError`) and its message,
- "crash": anything else, always a bug.
Every case names the outcome it must have and a fragment its message must contain.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from liandan.data.image_folder import open_image, scan_image_folder
from liandan.data.pixels import to_pixel_tensor
from liandan.errors import LiandanError
from liandan.formats.aesthetic import AestheticEmbedding, load_aesthetic, save_aesthetic
from liandan.formats.embedding import (
    Embedding,
    check_family,
    load_embedding,
    save_embedding_pt,
    save_embedding_safetensors,
)
from liandan.formats.hypernetwork import load_hypernetwork, save_hypernetwork
from liandan.formats.identify import identify
from liandan.formats.lora import read_lora
from liandan.jobs import job_from_dict, load_job_file
from liandan.models.hypernetwork_modules import Hypernetwork

Outcome = Literal["used", "skipped", "error", "crash"]
SD1_WIDTHS = [768]


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    run: Callable[[Path], str | None]  # builds the input under the folder and feeds it in; a skip reason
    expected: Outcome
    says: str = ""  # a fragment of the message (or skip reason)


def outcome(case: Case, folder: Path) -> tuple[Outcome, str]:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        skipped = case.run(folder)
    except LiandanError as e:
        return "error", str(e)
    except Exception as e:  # noqa: BLE001 - the corpus reports any other exception as the bug it is
        return "crash", f"{type(e).__name__}: {e}"
    return ("skipped", skipped) if skipped is not None else ("used", "")


# --- inputs ----------------------------------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo(size: tuple[int, int] = (64, 64), mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _exif_rotated_jpeg() -> bytes:
    image = _photo((64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° on display
    return _encoded(image, "JPEG", exif=exif.tobytes())


def _animated(fmt: str) -> bytes:
    frames = [_photo().rotate(angle) for angle in (0, 90, 180)]
    return _encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def _palette_with_transparency() -> bytes:
    image = _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encoded(image, "PNG", transparency=0)


def dataset_file(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], str | None]:
    """Put one file beside a good image and train-load it: its skip reason, or None when it was used
    (then its pixels must convert to a finite training tensor)."""

    def run(folder: Path) -> str | None:
        _photo().save(folder / "good.png")
        target = folder / name
        target.write_bytes(data() if callable(data) else data)
        scan = scan_image_folder(folder)
        reasons = {s.path.name: s.reason for s in scan.skipped}
        if name in reasons:
            return reasons[name]
        if name not in {r.path.name for r in scan.images}:
            raise AssertionError(f"{name} was neither used nor reported as skipped")
        pixels = to_pixel_tensor(open_image(target).convert("RGB").resize((64, 64)))
        if not torch.isfinite(pixels).all():
            raise AssertionError(f"{name} decoded to non-finite pixels")
        return None

    return run


def dataset_folder(make: Callable[[Path], Path]) -> Callable[[Path], str | None]:
    def run(folder: Path) -> str | None:
        scan_image_folder(make(folder))
        return None

    return run


def caption(data: bytes) -> Callable[[Path], str | None]:
    def run(folder: Path) -> str | None:
        from liandan.data.captions import read_caption

        _photo().save(folder / "a.png")
        (folder / "a.txt").write_bytes(data)
        text = read_caption(folder / "a.png", None, " ")
        if "\0" in text:
            raise AssertionError("a NUL byte reached the prompt")
        return None

    return run


def _embedding(width: int = 768, vectors: int = 2) -> Embedding:
    return Embedding(name="e", vectors={"*": torch.randn(vectors, width)})


def artifact(write: Callable[[Path], Path], read: Callable[[Path], Any]) -> Callable[[Path], str | None]:
    def run(folder: Path) -> str | None:
        read(write(folder))
        return None

    return run


def _bytes_file(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return write


def _truncated(write: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def cut(folder: Path) -> Path:
        path = write(folder)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path

    return cut


def _embedding_for_family(width: int) -> Callable[[Path], Embedding]:
    def read(path: Path) -> Embedding:
        embedding = load_embedding(path)
        check_family(embedding, [width])
        return embedding

    return read


def _aesthetic(width: int) -> AestheticEmbedding:
    return AestheticEmbedding(
        {"": torch.nn.functional.normalize(torch.randn(1, width), dim=-1)}, family="sd1"
    )


def _save_torch(value: Any, path: Path) -> Path:
    torch.save(value, path)  # how the old aesthetic-gradients extension wrote its files
    return path


def _aesthetic_for_width(width: int) -> Callable[[Path], Any]:
    """Read, then check against an SD1 model whose CLIP projection is `width` wide."""

    def read(path: Path) -> Any:
        from types import SimpleNamespace

        from liandan.models.aesthetic_conditioning import embedding_targets

        model = SimpleNamespace(family="sd1")
        return embedding_targets(load_aesthetic(path), model, [torch.zeros(width, 8)])  # type: ignore[arg-type]

    return read


def _hypernetwork_file(width: int) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        return save_hypernetwork(Hypernetwork("h", [width], [1.0, 2.0, 1.0]), folder / "h.pt")

    return write


def _safetensors_checkpoint(keys: dict[str, tuple[int, ...]]) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        from safetensors.torch import save_file

        path = folder / "model.safetensors"
        save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
        return path

    return write


def _load_checkpoint(path: Path) -> Any:
    from liandan.models.loading import load_bundle

    return load_bundle(path)


def job(data: dict[str, Any]) -> Callable[[Path], str | None]:
    def run(folder: Path) -> str | None:
        job_from_dict(data)
        return None

    return run


def job_file(name: str, text: str | bytes) -> Callable[[Path], str | None]:
    def run(folder: Path) -> str | None:
        path = folder / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        load_job_file(path)
        return None

    return run


TI = {"kind": "textual_inversion", "name": "ok"}
HN = {"kind": "hypernetwork", "name": "ok"}
SD3_KEYS = {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (8, 4)}
LORA_KEYS = {
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4),
}
INPAINT_KEYS = {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}


def _cases() -> list[Case]:
    photo = _photo()
    png, jpeg = _encoded(photo, "PNG"), _encoded(photo, "JPEG")
    image = "images"
    return [
        # images: each is used (and decodes to a finite tensor) or skipped with a reason
        Case("truncated png", image, dataset_file("t.png", png[: len(png) // 2]), "skipped", "truncated"),
        Case("truncated jpeg", image, dataset_file("t.jpg", jpeg[: len(jpeg) // 3]), "skipped", "truncated"),
        Case("zero-byte png", image, dataset_file("z.png", b""), "skipped", "empty file"),
        Case("text named .png", image, dataset_file("x.png", b"hello"), "skipped", "not an image"),
        Case("html named .jpg", image, dataset_file("x.jpg", b"<html></html>"), "skipped", "not an image"),
        Case(
            "decompression bomb",
            image,
            dataset_file("bomb.png", png_claiming(60000, 60000)),
            "skipped",
            "too large",
        ),
        Case(
            "CMYK jpeg",
            image,
            dataset_file("cmyk.jpg", lambda: _encoded(_photo(mode="CMYK"), "JPEG")),
            "used",
        ),
        Case(
            "16-bit grey png",
            image,
            dataset_file(
                "g16.png",
                lambda: _encoded(
                    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16), "PNG"
                ),
            ),
            "used",
        ),
        Case("palette + transparency", image, dataset_file("p.png", _palette_with_transparency), "used"),
        Case("animated gif", image, dataset_file("a.gif.png", lambda: _animated("GIF")), "used"),
        Case("animated webp", image, dataset_file("a.webp", lambda: _animated("WEBP")), "used"),
        Case("EXIF-rotated jpeg", image, dataset_file("r.jpg", _exif_rotated_jpeg), "used"),
        Case(
            "huge (6000x4000)",
            image,
            dataset_file("huge.png", lambda: _encoded(Image.new("RGB", (6000, 4000), "teal"), "PNG")),
            "used",
        ),
        Case(
            "1x1 pixel",
            image,
            dataset_file("dot.png", lambda: _encoded(Image.new("RGB", (1, 1)), "PNG")),
            "used",
        ),
        Case(
            "grey + alpha", image, dataset_file("la.png", lambda: _encoded(_photo(mode="LA"), "PNG")), "used"
        ),
        Case("1-bit", image, dataset_file("bw.bmp", lambda: _encoded(_photo(mode="1"), "BMP")), "used"),
        Case(
            "RGBA webp", image, dataset_file("x.webp", lambda: _encoded(_photo(mode="RGBA"), "WEBP")), "used"
        ),
        Case("upper-case .JPG", image, dataset_file("X.JPG", jpeg), "used"),
        Case("jpeg named .png", image, dataset_file("really-jpeg.png", jpeg), "used"),
        Case(
            "unsupported .gif",
            image,
            dataset_file("a.gif", lambda: _animated("GIF")),
            "skipped",
            "not an image file type",
        ),
        Case(
            "svg",
            image,
            dataset_file("v.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
            "skipped",
            "not an image file type",
        ),
        # odd names
        Case("unicode name", "names", dataset_file("猫 ☕ café.png", png), "used"),
        Case("spaces in name", "names", dataset_file("  a  b .png", png), "used"),
        Case("brackets in name", "names", dataset_file("[x] (1) {y}.png", png), "used"),
        Case("dots in name", "names", dataset_file("..hidden..png", png), "used"),
        Case("255-byte name", "names", dataset_file("n" * 251 + ".png", png), "used"),
        Case("newline in name", "names", dataset_file("a\nb.png", png), "used"),
        # folders
        Case("empty folder", "folders", dataset_folder(lambda f: f), "error", "no usable image"),
        Case(
            "only non-images",
            "folders",
            dataset_folder(lambda f: _written(f / "notes.md", b"x")),
            "error",
            "no usable image",
        ),
        Case("missing folder", "folders", dataset_folder(lambda f: f / "nope"), "error", "does not exist"),
        Case(
            "a file, not a folder",
            "folders",
            dataset_folder(lambda f: _written(f / "x.png", png) / "x.png"),
            "error",
            "not a folder",
        ),
        Case(
            "images only in sub-folders",
            "folders",
            dataset_folder(lambda f: _written(f / "sub" / "a.png", png).parent),
            "error",
            "recursive",
        ),
        # captions
        Case("caption not UTF-8", "captions", caption(b"caf\xe9 \xff"), "error", "not UTF-8"),
        Case("empty caption", "captions", caption(b""), "used"),
        Case("100 KB caption", "captions", caption(b"tag, " * 20000), "used"),
        Case("caption with BOM", "captions", caption("\ufeffa cat".encode()), "used"),
        Case("caption with NUL", "captions", caption(b"a\0cat"), "error", "NUL"),
        # artifacts: wrong family, truncated, zero-byte, not what they claim
        Case(
            "SD2 embedding in SD1",
            "artifacts",
            artifact(lambda f: save_embedding_pt(_embedding(1024), f / "e.pt"), _embedding_for_family(768)),
            "error",
            "another model family",
        ),
        Case(
            "truncated embedding .pt",
            "artifacts",
            artifact(_truncated(lambda f: save_embedding_pt(_embedding(), f / "e.pt")), load_embedding),
            "error",
            "corrupt",
        ),
        Case(
            "truncated embedding .safetensors",
            "artifacts",
            artifact(
                _truncated(lambda f: save_embedding_safetensors(_embedding(), f / "e.safetensors")),
                load_embedding,
            ),
            "error",
            "safetensors",
        ),
        Case(
            "zero-byte embedding",
            "artifacts",
            artifact(_bytes_file("e.pt", b""), load_embedding),
            "error",
            "e.pt",
        ),
        Case(
            "text named .pt",
            "artifacts",
            artifact(_bytes_file("e.pt", b"hello"), load_embedding),
            "error",
            "not a PyTorch file",
        ),
        Case(
            "hypernetwork of SDXL widths in SD1",
            "artifacts",
            artifact(_hypernetwork_file(2048), lambda p: load_hypernetwork(p, [768, 320, 640, 1280])),
            "error",
            "2048",
        ),
        Case(
            "truncated hypernetwork",
            "artifacts",
            artifact(_truncated(_hypernetwork_file(768)), load_hypernetwork),
            "error",
            "corrupt",
        ),
        Case(
            "embedding given as hypernetwork",
            "artifacts",
            artifact(lambda f: save_embedding_pt(_embedding(), f / "e.pt"), load_hypernetwork),
            "error",
            "not a hypernetwork",
        ),
        Case(
            "zero-byte checkpoint",
            "artifacts",
            artifact(_bytes_file("m.safetensors", b""), _load_checkpoint),
            "error",
            "m.safetensors",
        ),
        Case(
            "truncated checkpoint",
            "artifacts",
            artifact(
                _bytes_file("m.safetensors", b'\x40\x00\x00\x00\x00\x00\x00\x00{"a":'), _load_checkpoint
            ),
            "error",
            "m.safetensors",
        ),
        Case(
            "SD3 checkpoint",
            "artifacts",
            artifact(_safetensors_checkpoint(SD3_KEYS), _load_checkpoint),
            "error",
            "model.safetensors",
        ),
        Case(
            "inpainting checkpoint",
            "artifacts",
            artifact(_safetensors_checkpoint(INPAINT_KEYS), _load_checkpoint),
            "error",
            "model.safetensors",
        ),
        Case(
            "text named .ckpt",
            "artifacts",
            artifact(_bytes_file("m.ckpt", b"not a model"), _load_checkpoint),
            "error",
            "m.ckpt",
        ),
        Case(
            "unknown file kind",
            "artifacts",
            artifact(_bytes_file("x.bin", os.urandom(64)), identify),
            "error",
            "x.bin",
        ),
        Case(
            "aesthetic embedding of another width",
            "artifacts",
            artifact(lambda f: save_aesthetic(_aesthetic(1024), f / "a.pt"), _aesthetic_for_width(768)),
            "error",
            "1024",
        ),
        Case(
            "truncated aesthetic embedding",
            "artifacts",
            artifact(
                _truncated(lambda f: save_aesthetic(_aesthetic(768), f / "a.safetensors")), load_aesthetic
            ),
            "error",
            "a.safetensors",
        ),
        Case(
            "aesthetic embedding of NaNs (old extension's format)",
            "artifacts",
            artifact(lambda f: _save_torch(torch.full((1, 768), float("nan")), f / "a.pt"), load_aesthetic),
            "error",
            "a.pt",
        ),
        Case(
            "checkpoint given as a LoRA",
            "artifacts",
            artifact(_safetensors_checkpoint(INPAINT_KEYS), read_lora),
            "error",
            "no LoRA",
        ),
        Case(
            "LoRA as .pt",
            "artifacts",
            artifact(lambda f: save_embedding_pt(_embedding(), f / "l.pt"), read_lora),
            "error",
            "safetensors",
        ),
        Case(
            "truncated LoRA",
            "artifacts",
            artifact(_truncated(_safetensors_checkpoint(LORA_KEYS)), read_lora),
            "error",
            "not a readable LoRA",
        ),
        Case(
            "PNG without an embedding",
            "artifacts",
            artifact(_bytes_file("card.png", png), load_embedding),
            "error",
            "card.png",
        ),
        # job specs and files
        Case(
            "malformed lr schedule", "jobs", job({**TI, "train": {"learn_rate": "0.1:abc"}}), "error", "learn"
        ),
        Case(
            "lr schedule steps going back",
            "jobs",
            job({**TI, "train": {"learn_rate": "0.1:500, 0.01:100, 0.001"}}),
            "error",
            "learn",
        ),
        Case(
            "learning rate 1e38 (overflows the optimizer)",
            "jobs",
            job({**TI, "train": {"learn_rate": "0.005:10, 1e38"}}),
            "error",
            "far above",
        ),
        Case("learning rate inf", "jobs", job({**TI, "train": {"learn_rate": "inf"}}), "error", "finite"),
        Case("negative learning rate", "jobs", job({**TI, "train": {"learn_rate": "-1"}}), "error", "learn"),
        Case(
            "layer structure not 1 at the ends",
            "jobs",
            job({**HN, "layer_structure": "2, 1"}),
            "error",
            "layer",
        ),
        Case(
            "dropout structure of another length",
            "jobs",
            job({**HN, "use_dropout": True, "dropout_structure": "0, 0.1, 0.2, 0.3, 0"}),
            "error",
            "dropout",
        ),
        Case("unknown activation", "jobs", job({**HN, "activation": "rm -rf"}), "error", "activation"),
        Case("mistyped key", "jobs", job({**TI, "train": {"max_step": 5}}), "error", "max_steps"),
        Case("unknown kind", "jobs", job({"kind": "dreembooth"}), "error", "kind"),
        Case("no kind", "jobs", job({"name": "x"}), "error", "kind"),
        Case("steps out of range", "jobs", job({**TI, "train": {"max_steps": -5}}), "error", "max_steps"),
        Case("a string for a number", "jobs", job({**TI, "vectors": "many"}), "error", "vectors"),
        Case("name with a slash", "jobs", job({**TI, "name": "../../evil"}), "error", "not allowed"),
        Case("name '..'", "jobs", job({**TI, "name": ".."}), "error", "needs a letter or digit"),
        Case("empty name", "jobs", job({**TI, "name": ""}), "error", "name"),
        Case("300-character name", "jobs", job({**TI, "name": "n" * 300}), "error", "long"),
        Case(
            "TOML syntax error",
            "jobs",
            job_file("j.toml", 'kind = "textual_inversion"\nname = '),
            "error",
            "TOML",
        ),
        Case("job file not UTF-8", "jobs", job_file("j.toml", b"kind = '\xff'"), "error", "UTF-8"),
        Case("JSON list job file", "jobs", job_file("j.json", "[1, 2]"), "error", "j.json"),
        Case(
            "job file missing",
            "jobs",
            lambda f: load_job_file(f / "none.toml") and None,
            "error",
            "cannot read",
        ),
    ]


def _written(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.parent


CASES = _cases()


def report(results: list[tuple[Case, Outcome, str]]) -> str:
    """A Markdown table of every case and its outcome, with the totals first."""
    counts = {kind: sum(1 for _, got, _ in results if got == kind) for kind in ("used", "skipped", "error")}
    crashes = sum(1 for _, got, _ in results if got == "crash")
    lines = [
        f"hostile corpus: {len(results)} cases: {counts['error']} refused with a clear error, "
        f"{counts['skipped']} skipped with a reason, {counts['used']} used; {crashes} crashes",
        "",
        "| category | case | outcome | message |",
        "|---|---|---|---|",
    ]
    for case, got, message in results:
        text = json.dumps(message.splitlines()[0][:120] if message else "")[1:-1].replace("|", "\\|")
        lines.append(f"| {case.category} | {case.name} | {got} | {text} |")
    return "\n".join(lines)
