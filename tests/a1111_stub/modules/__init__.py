"""A stand-in for A1111 v1.10.1's `modules` package: only the surface liandan/host/webui.py and
scripts/liandan.py use, with the same names and call shapes, recording every call in CALLS.

Tests put tests/a1111_stub on sys.path, call `configure(...)`, and read CALLS / the fake state back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CALLS: list[tuple] = []


def record(*call: object) -> None:
    CALLS.append(call)


def configure(
    root: Path,
    flags: tuple[str, ...] = (),
    tag: str = "v1.10.1",
    model: str | None = "sd1",
    lora_extension: bool = True,
) -> None:
    """A fresh WebUI at `root` started with command-line `flags`, with an `sd1`/`sd2`/`sdxl` model loaded
    (or none)."""
    from modules import launch_utils, paths, script_callbacks, sd_models, shared

    CALLS.clear()
    launch_utils.TAG = tag
    paths.data_path = str(root)
    paths.models_path = str(root / "models")
    parser = argparse.ArgumentParser()
    for flag in ("--medvram", "--lowvram", "--xformers", "--opt-sdp-attention", "--api", "--nowebui"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--embeddings-dir", default=str(root / "embeddings"))
    parser.add_argument("--hypernetwork-dir", default=str(root / "models" / "hypernetworks"))
    parser.add_argument("--ckpt-dir", default=None)
    parser.add_argument("--api-auth", default=None)  # "user:password,user2:password2"
    parser.add_argument(
        "--textual-inversion-templates-dir", default=str(root / "textual_inversion_templates")
    )
    if lora_extension:  # added by extensions-builtin/Lora/preload.py
        parser.add_argument("--lora-dir", default=str(root / "models" / "Lora"))
    shared.cmd_opts = parser.parse_args(list(flags))
    shared.state = shared.State()
    shared.opts = shared.Options()
    sd_models.model_path = str(root / "models" / "Stable-diffusion")
    sd_models.reset(model, lowvram=shared.cmd_opts.lowvram or shared.cmd_opts.medvram)
    script_callbacks.clear_callbacks()
