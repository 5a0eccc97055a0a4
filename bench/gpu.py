"""The GPU benchmark: images/s and CUDA peak memory of every method and memory switch, in one run of under
8 minutes on one H100/H200-class GPU, with the issue's targets marked pass/fail.

    python -m bench.gpu --out /tmp/gpu.md            # the whole table, markdown, to stdout and the file
    python -m bench.gpu --record                     # also append every measured row to bench/RESULTS.md
    python -m bench.gpu --only lora --budget 120     # the cases whose name holds "lora"
    python -m bench.gpu --smoke                      # every case once: tiny models, 64 px, CPU if no CUDA

Weights are random at the released SD1.5 and SDXL sizes (the speed of a network does not depend on its
values), bf16 frozen weights or autocast, 512 px for SD1.5 and 1024 px for SDXL. Each case runs the step of
the per-method benchmark (bench/ti_speed.py, hn_speed.py, dreambooth_speed.py, lora_speed.py,
apt_speed.py) on a fresh model, then moves what the caches make unused to the CPU (the VAE; the text
encoders where they do not train), as the jobs' "move VAE and CLIP to RAM" does. Switches: 8-bit AdamW,
gradient checkpointing, fused backward, the plain attention processor instead of SDPA, torch.compile of the
UNet (nn.Module.compile, in place), and the latent / text-encoder caches off, which put the per-step work a
cache saves (the VAE encoding the batch, the text encoders encoding its prompts) in front of the same step.

Cases run in order, most important first; one that fails (out of memory, a compile error) prints its error
and the run goes on. Once the next case's estimated cost would pass `--budget` seconds, the rest are listed as
"not run (time budget)". Peak memory is torch.cuda.max_memory_allocated over the measured steps (reset after
the warm-up); GB are 10^9 bytes, as the targets say. `--smoke` (CI) runs every case once on the tiny
models, without targets; there torch.compile uses the "eager" backend (Dynamo's tracing, no code generation,
seconds instead of minutes on a CPU).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench import apt_speed, dreambooth_speed, hn_speed, lora_speed, ti_speed
from bench.harness import BenchRow, append_result, benchmark_args, measure
from liandan.atomic_files import write_text_atomic

SIZES = {"sd1": 512, "sdxl": 1024}
LORA_TYPES = ("lora", "locon", "loha", "lokr", "dora")
TEXT_FROZEN = ("hn", "dreambooth", *LORA_TYPES)  # methods whose conds come from the cond cache


@dataclass(frozen=True)
class Switches:
    optimizer: str = "AdamW"  # DreamBooth's; the other methods' steps use torch's AdamW
    checkpointing: bool = False
    fused_backward: bool = False
    sdpa: bool = True
    compile: bool = False
    latent_cache: bool = True
    text_cache: bool = True

    def label(self) -> str:
        words = {
            self.optimizer: self.optimizer != "AdamW",
            "ckpt": self.checkpointing,
            "fused": self.fused_backward,
            "compile": self.compile,
            "plain attention": not self.sdpa,
            "no latent cache": not self.latent_cache,
            "no text cache": not self.text_cache,
        }
        return ", ".join(word for word, on in words.items() if on) or "defaults"


@dataclass(frozen=True)
class Target:
    text: str
    min_images_per_s: float | None = None
    max_peak_gb: float | None = None

    def met(self, images_per_s: float, peak_gb: float) -> bool:
        fast = self.min_images_per_s is None or images_per_s >= self.min_images_per_s
        lean = self.max_peak_gb is None or peak_gb <= self.max_peak_gb
        return fast and lean


@dataclass(frozen=True)
class Case:
    method: str  # "ti", "hn", "dreambooth", "apt" or a LoRA type
    family: str  # "sd1" or "sdxl"
    batch: int
    switches: Switches = Switches()
    target: Target | None = None
    cost_s: float = 15.0  # a rough wall-clock estimate on an H100, for the time budget

    @property
    def name(self) -> str:
        return f"{self.method} {self.family} {SIZES[self.family]}px bs{self.batch} ({self.switches.label()})"


FAST = Target(">= 250 images/s", min_images_per_s=250)
EIGHT_BIT_CKPT = Switches(optimizer="AdamW8bit", checkpointing=True)
COMPILE_S = 150.0  # inductor compiles the UNet's forward and backward

CASES = (
    # the targets first
    Case("ti", "sd1", 32, target=FAST),
    Case("lora", "sd1", 32, target=FAST),
    Case("hn", "sd1", 32, target=FAST),
    Case("ti", "sd1", 1, target=Target("peak <= 3.5 GB", max_peak_gb=3.5)),
    Case("dreambooth", "sd1", 1, EIGHT_BIT_CKPT, Target("peak <= 6 GB", max_peak_gb=6)),
    Case(
        "dreambooth",
        "sd1",
        1,
        replace(EIGHT_BIT_CKPT, fused_backward=True),
        Target("peak <= 5 GB", max_peak_gb=5),
    ),
    Case("dreambooth", "sd1", 16, target=Target(">= 160 images/s", min_images_per_s=160), cost_s=25),
    Case(
        "lora",
        "sdxl",
        1,
        Switches(checkpointing=True),
        Target("peak <= 8 GB", max_peak_gb=8),
        cost_s=30,
    ),
    # the other methods and LoRA's variants
    Case("apt", "sd1", 16),
    *(Case(kind, "sd1", 32) for kind in LORA_TYPES[1:]),
    # one switch at a time against the rows above
    Case("dreambooth", "sd1", 1, Switches(checkpointing=True)),
    Case("dreambooth", "sd1", 1, Switches(optimizer="AdamW8bit")),
    Case("dreambooth", "sd1", 1, Switches(fused_backward=True)),
    Case("ti", "sd1", 32, Switches(checkpointing=True)),
    Case("ti", "sd1", 32, Switches(latent_cache=False)),
    Case("lora", "sd1", 32, Switches(checkpointing=True)),
    Case("lora", "sd1", 32, Switches(sdpa=False)),
    Case("lora", "sd1", 32, Switches(latent_cache=False)),
    Case("lora", "sd1", 32, Switches(text_cache=False)),
    Case("dreambooth", "sd1", 16, Switches(text_cache=False), cost_s=25),
    Case("lora", "sdxl", 1, cost_s=30),
    Case("dreambooth", "sdxl", 1, replace(EIGHT_BIT_CKPT, fused_backward=True), cost_s=40),
    # torch.compile last: each costs minutes of compiling
    Case("lora", "sd1", 32, Switches(compile=True), FAST, cost_s=COMPILE_S),
    Case("hn", "sd1", 32, Switches(compile=True), FAST, cost_s=COMPILE_S),
    Case("ti", "sd1", 32, Switches(compile=True), FAST, cost_s=COMPILE_S),
    Case(
        "dreambooth",
        "sd1",
        16,
        Switches(compile=True),
        Target(">= 160 images/s", min_images_per_s=160),
        cost_s=COMPILE_S,
    ),
)


def case_shape(case: Case, smoke: bool) -> tuple[int, int]:
    """The image size and batch a case runs at: the smoke run's are 64 px and at most 2."""
    return (64, min(case.batch, 2)) if smoke else (SIZES[case.family], case.batch)


@dataclass(frozen=True)
class Result:
    case: Case
    size: int
    batch: int
    images_per_s: float | None = None
    peak_gb: float | None = None
    note: str = ""  # the error, or why it did not run

    def cells(self) -> list[str]:
        case = self.case
        target = case.target.text if case.target else ""
        rate = "" if self.images_per_s is None else f"{self.images_per_s:.1f}"
        peak = "" if self.peak_gb is None else f"{self.peak_gb:.2f}"
        verdict = self.note
        if case.target is not None and self.images_per_s is not None and self.peak_gb is not None:
            verdict = "PASS" if case.target.met(self.images_per_s, self.peak_gb) else "FAIL"
        return [case.method, case.family, str(self.size), str(self.batch), case.switches.label(),
                rate, peak, target, verdict]  # fmt: skip


HEADER = ["method", "model", "px", "batch", "switches", "images/s", "peak GB", "target", "result"]


def markdown_table(results: list[Result], title: str) -> str:
    lines = [title, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()).replace("\n", " ") + " |" for r in results]
    return "\n".join(lines) + "\n"


def random_bundle(family: str, device: torch.device, smoke: bool):
    """A bundle at the released size with random weights drawn on `device` (seconds, not a minute of CPU
    initialisation); with `smoke` the tiny model of the family."""
    from liandan.models.model_spec import assemble_bundle, assign_tensor, build_modules, standard_spec
    from liandan.models.tiny import tiny_bundle

    if smoke:
        return tiny_bundle(family).to(device)
    spec = standard_spec(family)
    text_encoders, unet, vae = build_modules(spec, empty=True)
    generator = torch.Generator(device).manual_seed(0)
    for module in (*text_encoders, unet, vae):
        for name, param in list(module.named_parameters()):
            if param.ndim == 1:  # norm scales near one, biases near zero: activations keep their scale
                value = torch.full(param.shape, float(name.endswith("weight")), device=device)
            else:
                value = torch.randn(param.shape, device=device, generator=generator) * 0.02
            assign_tensor(module, name, value)
        module.to(device)  # the buffers (position ids)
    return assemble_bundle(spec, text_encoders, unet, vae, name=f"{family}-random")


def method_step(case: Case, bundle, size: int, batch: int, device: torch.device):
    """The per-method benchmark's step for `case`, with the switches the step builders take."""
    switches = case.switches
    if case.method == "ti":
        return ti_speed.liandan_step(bundle, size, batch, device, mixed_precision="bf16")
    if case.method == "hn":
        return hn_speed.liandan_step(bundle, size, batch, device, mixed_precision="bf16")
    if case.method == "apt":
        return apt_speed.apt_step(bundle, size, batch, device, mixed_precision="bf16")
    if case.method == "dreambooth":
        return dreambooth_speed.liandan_step(
            bundle,
            size,
            batch,
            device,
            optimizer_name=switches.optimizer,
            mixed_precision="bf16",
            gradient_checkpointing=switches.checkpointing,
            fused_backward=switches.fused_backward,
        )
    return lora_speed.liandan_step(
        bundle, size, batch, device, mixed_precision="bf16", network_type=case.method
    )


def uncached_work(case: Case, bundle, size: int, batch: int, device: torch.device) -> list[Callable]:
    """What the caches that `case` turns off would have saved, each step: encode the batch's pixels with
    the VAE, its prompts with the text encoders."""
    from liandan.models.conditioning import PromptEncoder

    work: list[Callable] = []
    if not case.switches.latent_cache:
        vae = bundle.vae.to(device, torch.bfloat16)
        pixels = torch.rand(batch, 3, size, size, device=device, dtype=torch.bfloat16) * 2 - 1
        work.append(lambda: vae.encode(pixels).latent_dist.sample())
    if not case.switches.text_cache:
        encoder = PromptEncoder(bundle, clip_skip=1)
        work.append(lambda: encoder.encode([ti_speed.PROMPT] * batch))
    return work


def build_case(case: Case, device: torch.device, smoke: bool) -> Callable[[], None]:
    """The case's step, warmed once and with what it leaves unused moved off the GPU."""
    size, batch = case_shape(case, smoke)
    switches = case.switches
    from diffusers.models.attention_processor import AttnProcessor

    from liandan.train.diffusion_loss import set_unet_gradient_checkpointing

    bundle = random_bundle(case.family, device, smoke)
    if not switches.sdpa:
        bundle.unet.set_attn_processor(AttnProcessor())
    train_step = method_step(case, bundle, size, batch, device)
    if switches.checkpointing and case.method != "dreambooth":  # DreamBooth's step takes it itself
        set_unet_gradient_checkpointing(bundle.unet, True)
    if switches.compile:
        bundle.unet.compile(backend="eager" if smoke else "inductor")  # eager: the CPU smoke skips codegen
    train_step()  # fills the cond cache
    if case.method in TEXT_FROZEN and switches.text_cache:
        for encoder in bundle.text_encoders:
            encoder.to("cpu")
    if switches.latent_cache:
        bundle.vae.to("cpu")
    work = uncached_work(case, bundle, size, batch, device)

    def step() -> None:
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16):
            for encode in work:
                encode()
        train_step()

    return step


def _close_fused_optimizers() -> None:
    """A fused backward's gradient hooks (kept by torch in C++, where gc does not look) and its optimizer
    hold each other and the UNet alive; the loop closes it after a job, a benchmark step has no end."""
    from liandan.train.fused_backward import FusedOptimizer

    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance reads a weakref proxy's target, and a dead one raises
        if issubclass(type(obj), FusedOptimizer):
            obj.close()


def run_case(case: Case, device: torch.device, smoke: bool, warmup: int, repeats: int) -> Result:
    size, batch = case_shape(case, smoke)
    try:
        step = build_case(case, device, smoke)
        result = measure(step, warmup, repeats)
    except Exception as error:  # noqa: BLE001 - one failing case (out of memory, a compile error) goes on
        first_line = (str(error).splitlines() or [""])[0][:200]
        return Result(case, size, batch, note=f"error: {type(error).__name__}: {first_line}")
    finally:
        step = None  # free the model before the next case
        _close_fused_optimizers()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    if smoke:  # tiny models on any device: the numbers prove the path runs, the targets do not apply
        return Result(replace(case, target=None), size, batch, batch / result.median_s)
    return Result(case, size, batch, batch / result.median_s, result.peak_memory_bytes / 1e9)


def main(argv: list[str] | None = None) -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--budget", type=float, default=450.0, help="seconds; later cases are not run")
    extra.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    extra.add_argument("--only", default="", help="run only the cases whose name contains this")
    known, rest = extra.parse_known_args(argv)
    args = benchmark_args(["--repeats", "5", *rest], __doc__ or "")  # few repeats; a later --repeats wins
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("bench.gpu needs a CUDA GPU (use --smoke to run every case on the CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:  # CI's smoke shares its 2 cores with other work: one thread is not oversubscribed
        torch.set_num_threads(1)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    machine = torch.cuda.get_device_name() if cuda else "cpu"
    warmup = 0 if args.smoke else args.warmup
    kind = "smoke: tiny models, 64 px, batch <= 2" if args.smoke else "bf16, random weights"
    started = time.perf_counter()
    results = []
    for case in (c for c in CASES if known.only in c.name):
        if time.perf_counter() - started + case.cost_s > known.budget:
            results.append(Result(case, *case_shape(case, args.smoke), note="not run (time budget)"))
        else:
            results.append(run_case(case, device, args.smoke, warmup, args.repeats))
        print(f"{time.perf_counter() - started:6.0f} s  {case.name}: " + " ".join(results[-1].cells()[5:]))
        title = f"## bench.gpu on {machine} ({kind}, {time.perf_counter() - started:.0f} s)"
        table = markdown_table(results, title)
        if known.out is not None:  # after every case: a run cut short still brings back what it measured
            write_text_atomic(known.out, table)
    print(table)
    if args.record:
        for result in results:
            if result.images_per_s is not None and result.peak_gb is not None:
                verdict = result.cells()[-1]
                text = f"{result.images_per_s:.1f} images/s, peak {result.peak_gb:.2f} GB cuda allocated"
                text += f"; {result.case.target.text}: {verdict}" if result.case.target else ""
                settings = f"{result.case.name}, bf16, random weights, {machine}"
                append_result(BenchRow("gpu", settings, text), command="python -m bench.gpu --record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
