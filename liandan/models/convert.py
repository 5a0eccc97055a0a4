"""`python -m liandan convert SRC DST [--dtype fp16|bf16|fp32]`: a model between A1111's single-file layout
(.safetensors, .ckpt) and a diffusers folder, either way (or file to file, to change the format or the
precision), SD1, SD2 and SDXL. The target is written atomically and never replaces an existing one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from liandan.errors import CheckpointError, ConfigError

DTYPES = ("fp16", "bf16", "fp32")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


def convert(source: Path, target: Path, dtype: str | None = None) -> Path:
    """Convert the model at `source` (a checkpoint file or a diffusers folder) to `target`: a checkpoint
    when it ends in .safetensors/.ckpt, else a diffusers folder. Returns `target`."""
    import torch

    from liandan.models.diffusers_folder import save_diffusers_folder
    from liandan.models.loading import load_bundle
    from liandan.models.saving import save_checkpoint

    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if not source.exists():
        raise CheckpointError(f"{source}: no such file or folder")
    if target.exists():
        raise CheckpointError(f"{target} already exists; convert to a new path")
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype or "")
    bundle = load_bundle(source)
    if target.suffix in CHECKPOINT_SUFFIXES:
        return save_checkpoint(
            bundle, target, dtype=torch_dtype, metadata={"liandan.converted_from": source.name}
        )
    if target.suffix:
        raise ConfigError(
            f"{target}: a checkpoint ends in {' or '.join(CHECKPOINT_SUFFIXES)}; a diffusers folder has "
            "no suffix"
        )
    return save_diffusers_folder(bundle, target, dtype=torch_dtype)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `convert` subcommand (cli.COMMAND_MODULES)."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a model between a single-file checkpoint and a diffusers folder (SD1/SD2/SDXL)",
        description="DST ending in .safetensors or .ckpt is a checkpoint, anything else a diffusers folder.",
    )
    parser.add_argument("source", type=Path, help="a .safetensors/.ckpt checkpoint or a diffusers folder")
    parser.add_argument("destination", type=Path, help="a new .safetensors/.ckpt file or folder")
    parser.add_argument("--dtype", choices=DTYPES, help="cast the weights (default: as they are)")
    parser.set_defaults(run=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    print(f"wrote {convert(args.source, args.destination, args.dtype)}")
    return 0
