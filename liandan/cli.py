"""`python -m liandan ...`: train from a job file, serve the standalone UI, write the tiny models, tell what
an artifact file is. Starting it stays fast: torch, gradio and the methods are imported by the subcommand
that runs.

Other packages add subcommands through a module listed in COMMAND_MODULES exposing `add_parser(subparsers)`;
the parser it adds sets `run=<function(args) -> exit code>` with `set_defaults`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from liandan.dependency_noise import quiet_dependency_noise
from liandan.errors import ConfigError, LiandanError

COMMAND_MODULES = ("liandan.preprocess.command", "liandan.formats.lora_command", "liandan.models.convert")
DEMO_JOB = Path(__file__).resolve().parents[1] / "examples" / "demo_ti.toml"
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m liandan",
        description="Train Stable Diffusion textual-inversion embeddings and hypernetworks, inside or "
        "outside the AUTOMATIC1111 WebUI.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="run a job file (.toml/.json) on the standalone host")
    train.add_argument("job", type=Path, help="the job file")
    _add_data_dir(train)
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, dotted for nested ones (train.max_steps=10, train.learn_rate=0.01); "
        "values are TOML, anything else is taken as text",
    )
    train.set_defaults(run=cmd_train)

    ui = sub.add_parser("ui", help="serve the standalone web UI")
    _add_data_dir(ui)
    ui.add_argument("--port", type=int, default=7870)
    ui.add_argument(
        "--listen",
        action="store_true",
        help="listen on all interfaces, not only 127.0.0.1; the UI and the REST routes then need a token",
    )
    ui.add_argument(
        "--token",
        default=os.environ.get("LIANDAN_TOKEN"),
        help="the token with --listen (default $LIANDAN_TOKEN; without one, one is made up and printed)",
    )
    ui.set_defaults(run=cmd_ui)

    tiny = sub.add_parser(
        "tiny-model", help="write the tiny random SD1 and SDXL checkpoints (for tests, demos)"
    )
    tiny.add_argument("--out", type=Path, default=Path("tiny-models"), help="folder to write them into")
    tiny.set_defaults(run=cmd_tiny_model)

    add_generate_parser(sub)

    info = sub.add_parser(
        "info",
        help="library versions and the GPU; with FILE, what an embedding, hypernetwork, LoRA or checkpoint "
        "file is and which models it fits",
    )
    info.add_argument("file", type=Path, nargs="?", metavar="FILE")
    info.set_defaults(run=cmd_info)

    demo = sub.add_parser(
        "demo",
        help=f"a short textual-inversion run on the tiny default model ({DEMO_JOB.name})",
    )
    _add_data_dir(demo)
    demo.set_defaults(run=cmd_demo)

    plan = sub.add_parser(
        "plan",
        help="measure on the GPU which memory switches a job file needs to fit (dry runs of a few steps; "
        "the user's folders are only read)",
    )
    plan.add_argument("job", type=Path, help="the job file")
    _add_data_dir(plan)
    plan.set_defaults(run=cmd_plan)

    for module_name in COMMAND_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).add_parser(sub)
    return parser


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="A1111-like folder tree ($LIANDAN_DATA_DIR or ./liandan-data)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    quiet_dependency_noise()
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LiandanError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


# --- train ------------------------------------------------------------------------------------------


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """["train.max_steps=10", "name=cat"] -> {"train": {"max_steps": 10}, "name": "cat"}. Values are read as
    TOML (numbers, booleans, quoted strings, lists); anything else is taken as a plain string."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 (the WebUI's own)
        import tomli as tomllib

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def with_overrides(spec: Any, pairs: Sequence[str]) -> Any:
    """The job with `--set` values merged in, validated again as a whole."""
    from liandan.jobs import job_from_dict, job_to_dict

    return job_from_dict(_merge(job_to_dict(spec), parse_overrides(pairs))) if pairs else spec


def cmd_train(args: argparse.Namespace) -> int:
    from liandan.jobs import load_job_file
    from liandan.train.launcher import check_process_count, parent_command_line

    check_process_count(os.environ, parent_command_line())
    return run_in_foreground(with_overrides(load_job_file(args.job), args.overrides), args.data_dir)


def run_in_foreground(spec: Any, data_dir: Path | None) -> int:
    """Run one job here with a progress bar; the first Ctrl+C asks the job to stop cleanly (it saves what it
    has), a second one kills the process."""
    from tqdm import tqdm

    from liandan.host.standalone import StandaloneHost
    from liandan.job_runner import run_job
    from liandan.progress import Reporter

    host = StandaloneHost(data_dir)
    outputs: list[Path] = []
    messages: list[str] = []
    bar = tqdm(desc=spec.kind, unit="step", dynamic_ncols=True)

    def show(event: Any) -> None:
        if event.total and bar.total != event.total:
            bar.total = event.total
            bar.refresh()
        if event.kind == "step":
            bar.update(event.step - bar.n)
            if event.loss is not None:
                bar.set_postfix(loss=f"{event.loss:.4f}")
        if event.kind in ("save", "done"):
            outputs.extend(p for p in event.paths if p not in outputs)
        # the engine says "finished" as a stage and again when done: print a repeated line once
        if event.message and event.message != (messages[-1] if messages else None):
            messages.append(event.message)
            bar.write(event.message)

    def on_sigint(signum: int, frame: Any) -> None:
        bar.write("interrupting: finishing the current step and saving (Ctrl+C again to kill)")
        host.control.interrupt()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        run_job(spec, host, Reporter(show, host.reporter), host.control)
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    for path in outputs:
        print(f"wrote {path}")
    print(f"logs in {spec.log_dir or host.folders.logs}")
    if host.control.interrupted:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan; exit 0 also where it cannot measure (no GPU): that is an answer, not a failure."""
    from liandan.host.standalone import StandaloneHost
    from liandan.jobs import load_job_file
    from liandan.train.planner import plan_job

    print(plan_job(load_job_file(args.job), StandaloneHost(args.data_dir)).message)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.job, args.overrides = DEMO_JOB, []
    return cmd_train(args)


# --- ui, tiny-model, info -------------------------------------------------------------------------------


def cmd_ui(args: argparse.Namespace) -> int:
    from liandan.host.standalone import StandaloneHost
    from liandan.job_runner import JobRunner
    from liandan.ui.app import build_app, serve

    host = StandaloneHost(args.data_dir)
    # jobs not finished when the server stops run again at its next start
    runner = JobRunner(host, journal=host.data_dir / "liandan-queue.json")
    print(f"liandan: data in {host.data_dir.resolve()}")
    token = None
    if args.listen:
        token = args.token or secrets.token_urlsafe(24)
        if not args.token:
            print(f"liandan: listening on all interfaces; token (UI password for user 'liandan'): {token}")
    serve(build_app(host, runner), runner, port=args.port, token=token)
    runner.close(timeout=10)
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from liandan.models.tiny import write_tiny_models

    args.out.mkdir(parents=True, exist_ok=True)
    write_tiny_models(args.out)
    for path in sorted(args.out.iterdir()):
        print(f"wrote {path}")
    return 0


# --- generate (our sampler, optionally with an aesthetic embedding) -------------------------------------

_AESTHETIC_FLAGS = {  # --aesthetic-<flag> -> AestheticSettings field
    "weight": "weight",
    "steps": "steps",
    "lr": "learn_rate",
    "slerp": "slerp",
    "slerp-angle": "slerp_angle",
    "text": "text",
    "text-negative": "text_is_negative",
}


def add_generate_parser(sub: Any) -> None:
    from liandan.jobs import AestheticSettings, GenerateSpec

    gen = sub.add_parser("generate", help="one fixed-seed image (PNG with infotext), optionally aesthetic")
    plain, aesthetic = GenerateSpec(), AestheticSettings()
    gen.add_argument("--prompt", required=True)
    for name in ("negative_prompt", "model", "seed", "steps", "cfg_scale", "sampler", "width", "height",
                 "clip_skip"):  # fmt: skip
        default = getattr(plain, name)
        gen.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    gen.add_argument("--out", type=Path, default=None, help="the PNG (default: <log folder>/generate/)")
    gen.add_argument("--aesthetic", default="", help="an aesthetic embedding: a name or a file")
    for flag, name in _AESTHETIC_FLAGS.items():
        default = getattr(aesthetic, name)
        if isinstance(default, bool):
            gen.add_argument(f"--aesthetic-{flag}", action=argparse.BooleanOptionalAction, default=default)
        else:
            gen.add_argument(f"--aesthetic-{flag}", type=type(default), default=default)
    gen.add_argument("--offline", action="store_true", help="never download CLIP weights")
    _add_data_dir(gen)
    gen.set_defaults(run=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from liandan.host.standalone import StandaloneHost
    from liandan.jobs import GenerateSpec
    from liandan.methods.aesthetic import generate_image

    options = vars(args)
    data = {name: options[name] for name in ("prompt", "negative_prompt", "model", "seed", "steps",
            "cfg_scale", "sampler", "width", "height", "clip_skip", "aesthetic", "out")}  # fmt: skip
    data["aesthetic_settings"] = {name: options[f"aesthetic_{flag.replace('-', '_')}"]
                                  for flag, name in _AESTHETIC_FLAGS.items()}  # fmt: skip
    data["allow_download"] = not args.offline
    path = generate_image(GenerateSpec.from_dict(data), StandaloneHost(args.data_dir))
    print(f"wrote {path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import liandan

    versions = {"liandan": liandan.__version__}
    if importlib.util.find_spec("liandan.versions") is not None:
        from liandan.versions import library_versions

        versions = library_versions() | versions  # its own list names liandan too: print it once
    for name, version in versions.items():
        print(f"{name} {version}")
    print(f"gpu {gpu_summary()}")
    if args.file is not None:
        from liandan.formats.identify import identify

        described = identify(args.file)
        print(f"file {args.file}")
        print("\n".join(described.lines()))
    return 0


def gpu_summary() -> str:
    """The accelerators torch sees, or plainly that there is none (the CUDA build alone says nothing)."""
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return ", ".join(names)
    if torch.backends.mps.is_available():
        return "Apple MPS"
    build = (
        f"torch is built for CUDA {torch.version.cuda}" if torch.version.cuda else "torch is a CPU-only build"
    )
    return f"none found ({build}): training runs on the CPU, slowly"
