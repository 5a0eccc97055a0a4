"""`python -m liandan lora merge|extract|resize|info`: the LoRA tools (formats/lora_tools.py) on the command
line. Light to import (the CLI builds every parser at start); the tools load torch when one runs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    lora = sub.add_parser("lora", help="LoRA tools: merge, extract, resize, info")
    tools = lora.add_subparsers(dest="tool", required=True, metavar="TOOL")
    merge = tools.add_parser("merge", help="merge a LoRA into a checkpoint at a weight")
    merge.add_argument("lora", type=Path)
    merge.add_argument("checkpoint", type=Path)
    merge.add_argument("--out", type=Path, required=True)
    merge.add_argument("--weight", type=float, default=1.0)
    merge.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    merge.set_defaults(
        run=_run(lambda tools, a: tools.merge_lora(a.lora, a.checkpoint, a.out, a.weight, a.precision).path)
    )
    extract = tools.add_parser("extract", help="extract a LoRA from the difference of two checkpoints")
    extract.add_argument("base", type=Path)
    extract.add_argument("tuned", type=Path)
    extract.add_argument("--out", type=Path, required=True)
    extract.add_argument("--rank", type=int, default=8)
    extract.add_argument("--conv-rank", type=int, default=0)
    extract.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    extract.set_defaults(
        run=_run(
            lambda tools, a: tools.extract_lora(a.base, a.tuned, a.out, a.rank, a.conv_rank, a.precision)
        )
    )
    resize = tools.add_parser("resize", help="resize a LoRA to a lower rank")
    resize.add_argument("lora", type=Path)
    resize.add_argument("--out", type=Path, required=True)
    resize.add_argument("--rank", type=int, required=True)
    resize.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    resize.set_defaults(run=_run(lambda tools, a: tools.resize_lora(a.lora, a.out, a.rank, a.precision)))
    info = tools.add_parser("info", help="show a LoRA's type, family, ranks and metadata")
    info.add_argument("lora", type=Path)
    info.set_defaults(run=_run(lambda tools, a: json.dumps(tools.describe_lora(a.lora), indent=1)))


def _run(tool: Callable[[Any, argparse.Namespace], object]) -> Callable[[argparse.Namespace], int]:
    """A subcommand that prints what the tool returns (the file written, or the description)."""

    def run(args: argparse.Namespace) -> int:
        from liandan.formats import lora_tools

        print(tool(lora_tools, args))
        return 0

    return run
