"""Per-step time of the WebUI's own textual-inversion and hypernetwork trainers against liandan's jobs, both
inside one real, unmodified A1111 WebUI v1.10.1 (safe-unpickle on) on the fixtures' tiny SD1 model.

    python -m bench.webui_trainers --smoke        # one boot, one short run of each trainer (skips without
                                                  # $LIANDAN_WEBUI_VENV, as CI's main venv has it)
    LIANDAN_WEBUI_VENV=/work/main/.venv-webui python -m bench.webui_trainers --threads 1 2 --repeats 5 \
        --warmup 1 --record

One WebUI boot per thread count (OMP_NUM_THREADS of the WebUI process: A1111 never sets torch's thread count
and liandan's job thread inherits it; the "cpu" column is the process's CPU seconds per wall second during
the runs, which shows what took effect). Both sides train the same weights on the same four 64 px images:
size 64, batch 1, one vector initialised from "a photo" (TI, AdamW without weight decay on both sides) and
the same 1, 2, 1 linear hypernetwork on every attention width (AdamW with torch's default weight decay 0.01,
which A1111 uses). Per-step time excludes setup: each side trains N1 and N2 steps and the step is
(t2 - t1) / (N2 - N1), interleaved A, B, A, B over the repeats; the median is reported. The WebUI's time is
its train request's wall time; liandan's is the job's finished - submitted time. `--compile` trains
liandan's jobs with train.torch_compile (give it long runs, e.g. `--steps 5 205`: a job's compiling is in
both of its runs and cancels only as far as it takes the same time).

The harness is tests/real_webui.py's. A1111's trainer needs two things on torch 2.14, both kept out of A1111's
files: a process-local sitecustomize (on the WebUI's PYTHONPATH only) that retries `Sampler.__init__(self)`
when torch refuses A1111's `Sampler.__init__(data_source)`; and the embedding / hypernetwork file its create
route wrote, rewritten in torch's legacy (non-zip) format, because its safe unpickler refuses the
`.format_version` entry torch 2.14 puts in every zip (fixtures/webui-1.10.1/MANIFEST.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.harness import BenchRow, append_result, benchmark_args
from liandan.atomic_files import write_atomic, write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the real-WebUI harness lives there

from data_helpers import gradient_image, save
from real_webui import VENV_VARIABLE, WebUI, make_root, our_additions, running_webui, webui_venv

LR_TI = "0.005"
LR_HN = "0.00001"
IMAGES = 4
TINY_WIDTHS = (32, 64, 128)  # the tiny model's attention widths: what liandan's empty `sizes` picks
SITECUSTOMIZE = '''"""A1111 1.10.1 calls Sampler.__init__(data_source), which torch >= 2.2 refuses."""
import torch.utils.data

_init = torch.utils.data.Sampler.__init__


def _init_either(self, *args, **kwargs):
    try:
        _init(self, *args, **kwargs)
    except TypeError:
        _init(self)


torch.utils.data.Sampler.__init__ = _init_either
'''


def legacy_pt(path: Path) -> None:
    """Rewrite a torch .pt in the legacy non-zip format, which A1111's safe unpickler accepts."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    write_atomic(path, lambda f: torch.save(data, f, _use_new_zipfile_serialization=False))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def a1111_arguments(data: Path, root: Path, steps: int, template: str) -> dict[str, Any]:
    """What the WebUI's Train tab sends, with previews, checkpoints and tensorboard off."""
    return {
        "id_task": "bench",
        "batch_size": 1,
        "gradient_step": 1,
        "data_root": str(data),
        "log_directory": str(root / "textual_inversion"),
        "training_width": 64,
        "training_height": 64,
        "varsize": False,
        "steps": steps,
        "clip_grad_mode": "disabled",
        "clip_grad_value": "0.1",
        "shuffle_tags": False,
        "tag_drop_out": 0,
        "latent_sampling_method": "once",
        "use_weight": False,
        "create_image_every": 0,
        "template_filename": template,
        "preview_from_txt2img": False,
        "preview_prompt": "",
        "preview_negative_prompt": "",
        "preview_steps": 20,
        "preview_sampler_name": "Euler",
        "preview_cfg_scale": 7.0,
        "preview_seed": -1,
        "preview_width": 64,
        "preview_height": 64,
    }


def a1111_ti(webui: WebUI, data: Path, name: str, steps: int) -> float:
    body = {"name": name, "num_vectors_per_token": 1, "overwrite_old": True, "init_text": "a photo"}
    webui.post("/sdapi/v1/create/embedding", body)
    legacy_pt(webui.root / "embeddings" / f"{name}.pt")
    webui.post("/sdapi/v1/refresh-embeddings")
    arguments = a1111_arguments(data, webui.root, steps, "subject.txt")
    arguments.update(embedding_name=name, learn_rate=LR_TI, save_embedding_every=0)
    arguments["save_image_with_stored_embedding"] = False
    return _timed_a1111(webui, "/sdapi/v1/train/embedding", arguments)


def a1111_hn(webui: WebUI, data: Path, name: str, steps: int) -> float:
    body = {
        "name": name,
        "enable_sizes": [str(width) for width in TINY_WIDTHS],
        "overwrite_old": True,
        "layer_structure": [1, 2, 1],
        "activation_func": "linear",
        "weight_init": "Normal",
    }
    webui.post("/sdapi/v1/create/hypernetwork", body)
    legacy_pt(webui.root / "models" / "hypernetworks" / f"{name}.pt")
    arguments = a1111_arguments(data, webui.root, steps, "hypernetwork.txt")
    arguments.update(hypernetwork_name=name, learn_rate=LR_HN, save_hypernetwork_every=0)
    return _timed_a1111(webui, "/sdapi/v1/train/hypernetwork", arguments)


def _timed_a1111(webui: WebUI, route: str, arguments: dict[str, Any]) -> float:
    start = time.perf_counter()
    info = webui.post(route, arguments)["info"]
    elapsed = time.perf_counter() - start
    if not info.endswith("error: None"):  # the route answers 200 either way
        raise RuntimeError(f"{route}: {info}\n{webui.console()[-4000:]}")
    return elapsed


def liandan_ti(webui: WebUI, data: Path, name: str, steps: int) -> float:
    spec = {
        "kind": "textual_inversion",
        "name": name,
        "init_text": "a photo",
        "vectors": 1,
        "train": {"max_steps": steps, "save_every": 0, "preview_every": 0, "learn_rate": LR_TI, **JOB_TRAIN},
        **_liandan_common(data),
    }
    return _timed_liandan(webui, spec)


def liandan_hn(webui: WebUI, data: Path, name: str, steps: int) -> float:
    spec = {
        "kind": "hypernetwork",
        "name": name,
        "layer_structure": "1, 2, 1",
        "activation": "linear",
        "weight_init": "Normal",
        "train": {
            "max_steps": steps,
            "save_every": 0,
            "preview_every": 0,
            "learn_rate": LR_HN,
            "weight_decay": 0.01,
            **JOB_TRAIN,
        },
        **_liandan_common(data),
    }
    return _timed_liandan(webui, spec)


def _liandan_common(data: Path) -> dict[str, Any]:
    return {
        "data": {"folder": str(data), "width": 64, "height": 64},
        "preview": {"steps": 2, "width": 64, "height": 64, "seed": 1, "self_test": False},
    }


def _timed_liandan(webui: WebUI, spec: dict[str, Any]) -> float:
    status = webui.wait_job(webui.submit(spec), timeout=1800)
    if status["state"] != "done":
        raise RuntimeError(f"liandan job {spec['name']}: {status['state']}: {status['error']}")
    return status["finished"] - status["submitted"]


Trainer = Callable[[WebUI, Path, str, int], float]
# train settings of liandan's jobs: the WebUI process's thread count (boot_and_measure sets it; a CPU job
# would otherwise choose its own, one for the tiny UNet, and the sides must run at the same count), and
# torch_compile with --compile
JOB_TRAIN: dict[str, Any] = {}
PAIRS: dict[str, tuple[Trainer, Trainer]] = {"ti": (a1111_ti, liandan_ti), "hn": (a1111_hn, liandan_hn)}


@dataclass(frozen=True)
class PairResult:
    method: str
    threads: int
    webui_s: float  # median seconds per step
    liandan_s: float
    webui_spread: tuple[float, float]
    liandan_spread: tuple[float, float]
    cpu: float  # the WebUI process's CPU seconds per wall second over these runs

    @property
    def ratio(self) -> float:
        return self.webui_s / self.liandan_s


class Runs:
    """Unique names for each run, so no run resumes or reuses another's files."""

    def __init__(self, webui: WebUI, data: Path) -> None:
        self.webui, self.data, self.count = webui, data, 0

    def run(self, trainer: Trainer, steps: int) -> float:
        self.count += 1
        return trainer(self.webui, self.data, f"bench{self.count}", steps)


def measure_pair(
    runs: Runs, method: str, threads: int, steps: tuple[int, int], warmup: int, repeats: int
) -> PairResult:
    webui_trainer, liandan_trainer = PAIRS[method]
    for _ in range(warmup):
        runs.run(webui_trainer, steps[0])
        runs.run(liandan_trainer, steps[0])
    per_step: dict[str, list[float]] = {"webui": [], "liandan": []}
    cpu_start, wall_start = cpu_seconds(runs.webui.process.pid), time.perf_counter()
    for _ in range(repeats):
        times: dict[str, list[float]] = {"webui": [], "liandan": []}
        for n in steps:  # A, B at N1, then A, B at N2
            times["webui"].append(runs.run(webui_trainer, n))
            times["liandan"].append(runs.run(liandan_trainer, n))
        for side, (t1, t2) in times.items():
            per_step[side].append((t2 - t1) / (steps[1] - steps[0]))
    cpu = (cpu_seconds(runs.webui.process.pid) - cpu_start) / (time.perf_counter() - wall_start)
    return PairResult(
        method,
        threads,
        statistics.median(per_step["webui"]),
        statistics.median(per_step["liandan"]),
        (min(per_step["webui"]), max(per_step["webui"])),
        (min(per_step["liandan"]), max(per_step["liandan"])),
        cpu,
    )


def make_data(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(IMAGES):
        save(gradient_image((64, 64), seed=i), folder / f"{i}.png")
        write_text_atomic(folder / f"{i}.txt", "a thing")
    return folder


def boot_and_measure(work: Path, threads: int, run: Callable[[Runs], list[PairResult]]) -> list[PairResult]:
    """A fresh WebUI tree with liandan, booted at `threads`, and `run` over it."""
    venv = webui_venv()
    shim = work / "shim"
    shim.mkdir(parents=True)
    write_text_atomic(shim / "sitecustomize.py", SITECUSTOMIZE)
    root = make_root(work / "webui")
    data = make_data(work / "data")
    env = {"PYTHONPATH": str(shim), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    JOB_TRAIN["cpu_threads"] = threads
    # a venv fresh from setup-env lacks what install.py adds: that boot runs it, as a user's first start does
    installed = venv.versions()
    prepare = any(name not in installed for name in our_additions())
    log_name = f"console-{threads}.log"
    with running_webui(root, venv, env=env, log_name=log_name, prepare_environment=prepare) as webui:
        # A1111 writes its settings .txt into a log folder it only creates when it saves or previews
        webui.post("/sdapi/v1/options", {"save_training_settings_to_txt": False})
        return run(Runs(webui, data))


def smoke(work: Path) -> None:
    def once(runs: Runs) -> list[PairResult]:
        for pair in PAIRS.values():
            for trainer in pair:
                print(f"smoke: {trainer.__name__} 1 step: {runs.run(trainer, 1):.1f} s")
        return []

    boot_and_measure(work, 1, once)


def _ms(median_s: float, spread: tuple[float, float]) -> str:
    return f"{median_s * 1000:.1f} ({spread[0] * 1000:.0f}-{spread[1] * 1000:.0f})"


def print_table(results: Sequence[PairResult], steps: tuple[int, int]) -> None:
    print(f"\nper-step time, median over repeats, from {steps[0]}- and {steps[1]}-step runs")
    print(f"{'method':6s} {'threads':>7s} {'cpu':>5s} {'WebUI ms':>18s} {'liandan ms':>18s} {'ratio':>6s}")
    for r in results:
        webui, ours = _ms(r.webui_s, r.webui_spread), _ms(r.liandan_s, r.liandan_spread)
        print(f"{r.method:6s} {r.threads:7d} {r.cpu:5.2f} {webui:>18s} {ours:>18s} {r.ratio:5.2f}x")


def record(result: PairResult, steps: tuple[int, int], repeats: int, warmup: int) -> None:
    compiled = bool(JOB_TRAIN.get("torch_compile"))
    settings = (
        f"real WebUI 1.10.1, sd1 tiny 64px bs1 fp32 cpu, {result.threads} thread(s) "
        f"(cpu {result.cpu:.2f}), AdamW, steps {steps[0]}/{steps[1]}, {repeats} repeats"
        + (", liandan with torch_compile" if compiled else "")
    )
    text = (
        f"WebUI {result.method.upper()} {_ms(result.webui_s, result.webui_spread)} ms, liandan "
        f"{'compiled ' if compiled else ''}{_ms(result.liandan_s, result.liandan_spread)} ms per step, "
        f"median (min-max) ({result.ratio:.2f}x; target >= 2.5x)"
    )
    command = (
        f"python -m bench.webui_trainers --threads {result.threads} --steps {steps[0]} {steps[1]} "
        f"--repeats {repeats} --warmup {warmup}{' --compile' if compiled else ''} --record"
    )
    append_result(BenchRow(f"webui-{result.method}-step", settings, text), command=command)


def main(argv: Sequence[str] | None = None) -> None:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    extra.add_argument("--steps", type=int, nargs=2, default=[5, 25], metavar=("N1", "N2"))
    extra.add_argument("--methods", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    extra.add_argument("--compile", action="store_true", help="liandan's jobs with train.torch_compile")
    known, rest = extra.parse_known_args(argv)
    if known.compile:
        JOB_TRAIN["torch_compile"] = True
    args = benchmark_args(rest, __doc__ or "")
    steps = (known.steps[0], known.steps[1])
    if not 0 < steps[0] < steps[1]:
        raise SystemExit(f"--steps needs 0 < N1 < N2, got {steps[0]} {steps[1]}")
    if not os.environ.get(VENV_VARIABLE):
        print(f"skip: bench.webui_trainers needs ${VENV_VARIABLE} (a venv of .ci/setup-env --webui-real)")
        return
    with tempfile.TemporaryDirectory(prefix="liandan-webui-bench-") as temporary:
        work = Path(temporary)
        if args.smoke:
            smoke(work)
            return
        results: list[PairResult] = []
        for threads in known.threads:

            def measure_all(runs: Runs, threads: int = threads) -> list[PairResult]:
                return [
                    measure_pair(runs, method, threads, steps, args.warmup, args.repeats)
                    for method in known.methods
                ]

            results += boot_and_measure(work / f"threads{threads}", threads, measure_all)
            print_table(results, steps)
    if args.record:
        for result in results:
            record(result, steps, args.repeats, args.warmup)


if __name__ == "__main__":
    main()
