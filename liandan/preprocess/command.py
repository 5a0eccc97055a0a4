"""`python -m liandan preprocess SOURCE DEST [options]`: every PreprocessJob field is an option.

liandan/cli.py calls `add_parser(subparsers)`; the sub-command sets `run` to `run_command(args) -> int`
(a LiandanError propagates: the CLI prints its message).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from liandan.errors import LiandanError

_POSITIONAL = ("source", "destination")
_NOT_OPTIONS = {"model", "log_dir", "clip_skip"}  # JobSpec fields a preprocess job does not use


def _option_for(parser: argparse.ArgumentParser, name: str, hint: Any, default: Any, help: str) -> None:
    flag = "--" + name.replace("_", "-")
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
        origin = get_origin(hint)
    if hint is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)
    elif origin is Literal:
        parser.add_argument(flag, choices=get_args(hint), default=default, help=help)
    elif origin is tuple:
        choices = get_args(get_args(hint)[0])
        parser.add_argument(
            flag, nargs="*", choices=choices or None, default=default, metavar="NAME", help=help
        )
    else:
        kind = hint if hint in (int, float, str, Path) else str
        parser.add_argument(flag, type=kind, default=default, help=help)


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        default = " ".join(default)
    return "none" if default in ("", None) else str(default)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from liandan.preprocess.job import LABELS, PreprocessJob

    parser = subparsers.add_parser(
        "preprocess",
        help="resize/crop/flip/split a folder of pictures and caption them (deepbooru, BLIP, WD14)",
        description="Turn a folder of pictures into a training set. The source folder is never written.",
    )
    parser.add_argument("source", type=Path, help="folder of pictures (only read)")
    parser.add_argument("destination", type=Path, help="output folder, outside the source")
    parser.add_argument(
        "--job", type=Path, help="a .toml/.json preprocess job; options given here override it"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="A1111-like data folder (its models/ holds the weights)"
    )
    parser.add_argument("--models-dir", type=Path, help="A1111's models/ folder (default: <data dir>/models)")
    hints = typing.get_type_hints(PreprocessJob)
    defaults = PreprocessJob()
    for f in dataclasses.fields(PreprocessJob):
        if f.name not in _POSITIONAL and f.name not in _NOT_OPTIONS:
            label = LABELS.get(f.name, f.name.replace("_", " "))
            help_text = f"{label} (default: {_shown(getattr(defaults, f.name))})".replace("%", "%%")
            _option_for(parser, f.name, hints[f.name], argparse.SUPPRESS, help_text)
    parser.set_defaults(run=run_command)
    return parser


def job_from_args(args: argparse.Namespace):
    from liandan.jobs import job_to_dict, load_job_file
    from liandan.preprocess.job import PreprocessJob

    base = load_job_file(args.job) if args.job else PreprocessJob()
    if not isinstance(base, PreprocessJob):
        raise LiandanError(f"{args.job} is a {base.kind!r} job, not a preprocess job")
    data = job_to_dict(base)
    names = {f.name for f in dataclasses.fields(PreprocessJob)}
    data.update({k: v for k, v in vars(args).items() if k in names})
    data["captioners"] = tuple(data.get("captioners", ()))
    return PreprocessJob.from_dict(data)


def models_dir_from_args(args: argparse.Namespace) -> Path:
    from liandan.host.standalone import default_data_dir, standalone_folders

    if args.models_dir:
        return args.models_dir
    return standalone_folders(args.data_dir or default_data_dir()).models


def run_command(args: argparse.Namespace) -> int:
    from liandan.preprocess.batch import run_preprocess

    summary = run_preprocess(job_from_args(args), models_dir_from_args(args))
    print(summary.text())
    return 0
