"""The time aesthetic gradients add per image, beside plain generation in the same run.

    python -m bench.aesthetic_speed --smoke                  # tiny SD1, 2 sampling steps: proves it runs
    python -m bench.aesthetic_speed --model tiny --record    # the issue's target: <= 25% at 20 steps
    python -m bench.aesthetic_speed --model sd15 --repeats 3 --record   # random SD1.5-sized weights

Three ways to make the same fixed-seed 64 px image with `steps` sampling steps (Euler a, CFG 7): plain;
with an aesthetic embedding and an empty cache (the prompt is adapted: 5 Adam steps on a copy of the text
encoder, then encoded again); and with the adapted prompt already cached (a repeat of the prompt).
"""

from __future__ import annotations

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

    def image(hook=None) -> None:
        generate(
            bundle, PROMPT, steps=steps, cfg_scale=7.0, seed=1, width=64, height=64, conditioning_hook=hook
        )

    def steered(prompts, plain):
        return conditioner.apply(prompts, plain, settings)

    def cold() -> None:
        conditioner._cache.clear()
        image(steered)

    plain = measure(image, args.warmup, args.repeats)
    miss = measure(cold, args.warmup, args.repeats)
    hit = measure(lambda: image(steered), args.warmup, args.repeats)

    def added(m) -> str:
        return f"{m.median_s * 1000:.0f} ms (+{(m.median_s / plain.median_s - 1) * 100:.0f}%)"

    result = (
        f"plain {plain.median_s * 1000:.0f} ms, aesthetic {added(miss)}, cached prompt {added(hit)} per image"
    )
    settings_text = f"sd1 {model} 64px {steps} steps euler_a cpu, aesthetic 5 steps (n={args.repeats})"
    print(f"{settings_text}: {result}")
    if args.record:
        command = "python -m bench.aesthetic_speed " + " ".join(sys.argv[1:] if argv is None else argv)
        append_result(BenchRow("aesthetic-image", settings_text, result), command.strip())


if __name__ == "__main__":
    main()
