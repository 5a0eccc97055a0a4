"""Images per second for the preprocess image operations and each captioner.

    python -m bench.preprocess_speed                # CPU: tiny random models of the real architectures
    python -m bench.preprocess_speed --smoke        # a few images, seconds (CI)
    python -m bench.preprocess_speed --real --device cuda --record   # real-size deepbooru and BLIP-base

Weights are random (the speed of a network does not depend on its values); the tiny models come from
tests/preprocess_models.py. WD14 is always the tiny ONNX tagger (no real-size export is built here).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

from bench.harness import BenchRow, append_result, measure
from liandan.preprocess.autosize_crop import AutosizeSettings, autosize_crop
from liandan.preprocess.focal_crop import FocalSettings, focal_crop
from liandan.preprocess.image_ops import flipped_copies, resize
from liandan.preprocess.split import split_oversized
from liandan.preprocess.tag_format import TagFormat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from preprocess_models import make_blip_folder, make_deepbooru_file, make_wd14_folder


def _images(count: int) -> list[Image.Image]:
    return [Image.linear_gradient("L").convert("RGB").resize((768 + 64 * (i % 3), 512)) for i in range(count)]


def image_op_benchmarks(images: list[Image.Image]) -> dict[str, object]:
    return {
        "resize crop 512": lambda: [resize(im, 512, 512, "crop") for im in images],
        "flip both": lambda: [flipped_copies(im, "both") for im in images],
        "focal crop 512": lambda: [focal_crop(im, FocalSettings(512, 512)) for im in images],
        "auto-sized crop": lambda: [autosize_crop(im, AutosizeSettings()) for im in images],
        "split 256": lambda: [split_oversized(im, 256, 256, 0.2) for im in images],
    }


CAPTIONERS = ("deepbooru", "blip", "wd14")


def captioner_benchmarks(images: list[Image.Image], work: Path, real: bool, device: str) -> dict[str, object]:
    import torch

    from liandan.preprocess.blip import BlipCaptioner, BlipOptions
    from liandan.preprocess.deepbooru import REAL_TAG_COUNT, DeepbooruCaptioner, load_deepbooru
    from liandan.preprocess.wd14 import Wd14Captioner, Wd14Options

    tags = [f"tag_{i}" for i in range(REAL_TAG_COUNT if real else 16)]
    deepbooru = load_deepbooru(make_deepbooru_file(work / "db.pt", tags, width_divisor=1 if real else 16))
    if real:
        from transformers import BlipConfig, BlipForConditionalGeneration

        blip_folder = make_blip_folder(work / "blip")  # tokenizer and processor; weights replaced below
        BlipForConditionalGeneration(BlipConfig()).save_pretrained(blip_folder)
        blip_options = BlipOptions(model=str(blip_folder), min_length=24, max_length=48)
    else:
        blip_folder = make_blip_folder(work / "blip")
        blip_options = BlipOptions(model=str(blip_folder), min_length=4, max_length=12)
    captioners = {
        "deepbooru": DeepbooruCaptioner(deepbooru, TagFormat(), device),
        "blip": BlipCaptioner(blip_folder, blip_options, device),
        "wd14": Wd14Captioner.load(Wd14Options(model=str(make_wd14_folder(work / "wd14"))), work, device),
    }
    torch.manual_seed(0)
    return {name: (lambda c=c: c.caption(images)) for name, c in captioners.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--real", action="store_true", help="real-size deepbooru (9176 tags) and BLIP-base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    images = _images(1 if args.smoke else args.batch)
    repeats = 1 if args.smoke else 5
    with tempfile.TemporaryDirectory() as tmp:
        benchmarks = {
            **image_op_benchmarks(images),
            **captioner_benchmarks(images, Path(tmp), args.real, args.device),
        }
        for name, fn in benchmarks.items():
            result = measure(fn, warmup=0 if args.smoke else 1, repeats=repeats)
            rate = len(images) / result.median_s
            model = "real-size" if args.real and name in ("deepbooru", "blip") else "tiny"
            kind = f"{model} model, " if name in CAPTIONERS else ""
            settings = f"{name}, {kind}{args.device}, batch {len(images)}, 768x512 inputs"
            print(f"{settings}: {rate:.2f} images/s")
            if args.record and not args.smoke:
                row = BenchRow("preprocess-speed", settings, f"{rate:.2f} images/s; {result.summary()}")
                append_result(row, command=f"python -m bench.preprocess_speed {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
