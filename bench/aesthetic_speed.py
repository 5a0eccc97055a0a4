"""The time aesthetic gradients add per image, beside plain generation in the same run.

    python -m bench.aesthetic_speed --smoke                  # tiny SD1, 2 sampling steps: proves it runs
    python -m bench.aesthetic_speed --model tiny --record    # the issue's target: <= 25% at 20 steps
    python -m bench.aesthetic_speed --model sd15 --repeats 3 --record   # random SD1.5-sized weights

A plain fixed-seed 64 px image with `steps` sampling steps (Euler a, CFG 7), and what the aesthetic hook
adds to it: for a new prompt, its adaptation (5 Adam steps on a copy of the text encoder, the prompt encoded
again, the blend); for a prompt in the cache, the blend alone. Measured apart, interleaved in rounds, since
on a shared CPU the image's own time varies by more than the hook costs. (`tests/test_aesthetic_*` check
that the hooked image is the plain one with the blended conditioning.)
"""

from __future__ import annotations

import statistics
import sys

import torch

from bench.harness import BenchRow, append_result, benchmark_args, measure
from bench.ti_speed import build_bundle

PROMPT = "a painting of a lighthouse at dusk, oil on canvas"


def main(argv: list[str] | None = None) -> None:
    import argparse

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    extra.add_argument("--steps", type=int, default=20)
    known, rest = extra.parse_known_args(argv)
    args = benchmark_args(rest, __doc__)
    model, steps = ("tiny", 2) if args.smoke else (known.model, known.steps)

    from liandan.formats.aesthetic import AestheticEmbedding
    from liandan.jobs import AestheticSettings
    from liandan.models.aesthetic_conditioning import AestheticConditioner
    from liandan.models.sampling import generate

    torch.set_num_threads(1)  # as the tests run: steadier on a shared CPU
    torch.manual_seed(0)
    bundle = build_bundle(model)
    width = 768 if model == "sd15" else bundle.text_encoders[0].config.projection_dim
    # a random embedding and projection of the real widths: the cost does not depend on their values
    embedding = AestheticEmbedding(
        {"": torch.nn.functional.normalize(torch.randn(1, width), dim=-1)}, name="b"
    )
    hidden = bundle.text_encoders[0].config.hidden_size
    conditioner = AestheticConditioner(bundle, embedding, [torch.randn(width, hidden) / hidden**0.5])
    settings = AestheticSettings()

    from liandan.models.conditioning import PromptEncoder

    def image() -> None:
        generate(bundle, PROMPT, steps=steps, cfg_scale=7.0, seed=1, width=64, height=64)

    plain_cond = PromptEncoder(bundle).encode([PROMPT])

    def adapt() -> None:  # what a prompt not in the cache adds to its image
        conditioner._cache.clear()
        conditioner.apply([PROMPT], plain_cond, settings)

    def hit() -> None:  # what a cached prompt adds: the blend
        conditioner.apply([PROMPT], plain_cond, settings)

    # interleaved, one call of each per round, so a busy shared CPU slows all of them alike
    variants = {"plain": image, "miss": adapt, "hit": hit}
    for fn in variants.values():
        measure(fn, args.warmup, 1)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(measure(fn, 0, 1).median_s)
    median = {name: statistics.median(values) for name, values in times.items()}

    def added(name: str) -> str:
        return f"+{median[name] * 1000:.2f} ms ({median[name] / median['plain'] * 100:.1f}%)"

    result = (
        f"plain image {median['plain'] * 1000:.0f} ms; added per image: new prompt {added('miss')}, "
        f"cached prompt {added('hit')}"
    )
    settings_text = f"sd1 {model} 64px {steps} steps euler_a cpu, aesthetic 5 steps (n={args.repeats})"
    print(f"{settings_text}: {result}")
    if args.record:
        command = "python -m bench.aesthetic_speed " + " ".join(sys.argv[1:] if argv is None else argv)
        append_result(BenchRow("aesthetic-image", settings_text, result), command.strip())


if __name__ == "__main__":
    main()
