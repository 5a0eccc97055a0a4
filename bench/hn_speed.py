"""Hypernetwork step time against a plain loop at identical settings (SD1, structure "1, 2, 1", AdamW, fp32),
interleaved in one run.

    python -m bench.hn_speed --smoke                          # tiny SD1 at 64 px, one repeat (CI)
    python -m bench.hn_speed --model tiny --size 64 128 --record
    python -m bench.hn_speed --model sd15 --size 64 128 --repeats 5 --record   # random SD1.5-sized weights

liandan: the hypernetwork job's step (HypernetworkMethod.loss: K/V transforms installed on the frozen UNet's
attention, the cond cached, cached latents, the loop's optimizer). The plain loop, as A1111's trainer and a
diffusers loop would write it: the VAE encodes the pixels and the text encoder the prompt every step, and an
attention processor runs the same hypernetwork modules on each attention layer's K/V input before SDPA.
File size and parameter count per layer structure: bench/hypernetwork_sizes.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.harness import (
    Comparison,
    fresh_sides,
    method_context,
    method_step,
    run_comparison,
    step_benchmark_args,
)
from bench.plain_loop import example_script_step
from bench.ti_speed import PROMPT, build_bundle

LR = 5e-6
LAYER_STRUCTURE = "1, 2, 1"


def _hypernetwork(bundle):
    from liandan.jobs import HypernetworkJob
    from liandan.methods.hypernetwork import build_hypernetwork, model_attention_widths

    torch.manual_seed(0)
    job = HypernetworkJob(name="benchhn", layer_structure=LAYER_STRUCTURE)
    return job, build_hypernetwork(job, model_attention_widths(bundle))


def liandan_step(
    bundle,
    size: int,
    batch: int,
    device: torch.device,
    mixed_precision: str = "no",
    torch_compile: bool = False,
) -> Callable[[], None]:
    """The job's step; `mixed_precision` as TrainSpec has it (the loop's autocast around the loss)."""
    from liandan.jobs import DataSpec, TrainSpec
    from liandan.methods.hypernetwork import HypernetworkMethod

    job, hypernetwork = _hypernetwork(bundle)
    job = job.replace(
        train=TrainSpec(mixed_precision=mixed_precision, torch_compile=torch_compile),
        data=DataSpec(width=size, height=size),
    )
    context = method_context(job, bundle, device)
    method = HypernetworkMethod(context, hypernetwork)
    latent = size // bundle.vae_scale_factor
    batch_dict = {
        "latents": torch.randn(batch, 4, latent, latent, device=device),
        "prompts": [PROMPT] * batch,
        "loss_weight": None,
    }
    return method_step(method, batch_dict, LR, device, mixed_precision)


class PlainHypernetworkAttention:
    """A diffusers attention processor that runs the hypernetwork's K and V modules on the layer's K/V input
    (the context, or the hidden states in self-attention), then plain SDPA."""

    def __init__(self, k_module: torch.nn.Module, v_module: torch.nn.Module) -> None:
        self.k_module, self.v_module = k_module, v_module

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        import torch.nn.functional as F

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(self.k_module(context)), attn.to_v(self.v_module(context))
        batch, heads = hidden_states.shape[0], attn.heads
        query, key, value = (
            x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (query, key, value)
        )
        out = (
            F.scaled_dot_product_attention(query, key, value)
            .transpose(1, 2)
            .reshape(batch, -1, query.shape[-1] * heads)
        )
        return attn.to_out[1](attn.to_out[0](out))


def plain_step(
    bundle, size: int, batch: int, device: torch.device, model_work_only: bool = False
) -> Callable[[], None]:
    from liandan.models.attention_hooks import attention_layers, kv_input_width

    _, hypernetwork = _hypernetwork(bundle)
    bundle.unet.to(device).requires_grad_(False).eval()
    hypernetwork.to(device).train()
    for attn in attention_layers(bundle.unet).values():
        pair = hypernetwork.pair(kv_input_width(attn))  # the modules with their residual: x + f(x)
        if pair is not None:
            attn.set_processor(PlainHypernetworkAttention(*pair))
    optimizer = torch.optim.AdamW(hypernetwork.parameters(), lr=LR)
    return example_script_step(bundle, size, batch, device, optimizer, model_work_only)


COMPARISON = Comparison(
    "hn-step",
    "bench.hn_speed",
    fresh_sides({"liandan": liandan_step, "plain loop": plain_step}, build_bundle),
    lambda args, size: f"sd1 {args.model} {size}px bs{args.batch} fp32 AdamW, structure {LAYER_STRUCTURE!r}",
)


def main(argv: list[str] | None = None) -> None:
    run_comparison(COMPARISON, step_benchmark_args(argv, __doc__ or ""))


if __name__ == "__main__":
    main()
