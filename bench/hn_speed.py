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
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.harness import Comparison, run_comparison, step_benchmark_args
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
    bundle, size: int, batch: int, device: torch.device, mixed_precision: str = "no"
) -> Callable[[], None]:
    """The job's step; `mixed_precision` as TrainSpec has it (the loop's autocast around the loss)."""
    from liandan.host.base import CheckpointRef
    from liandan.jobs import DataSpec, TrainSpec
    from liandan.methods.hypernetwork import HypernetworkMethod
    from liandan.train.optimizers import build_optimizer

    job, hypernetwork = _hypernetwork(bundle)
    job = job.replace(
        train=TrainSpec(mixed_precision=mixed_precision), data=DataSpec(width=size, height=size)
    )
    context = SimpleNamespace(
        job=job, host=None, checkpoint=CheckpointRef(Path("bench.safetensors"), "bench"), bundle=bundle,
        dataset=None, run_dir=Path(), device=device, say=print,
    )  # fmt: skip
    method = HypernetworkMethod(context, hypernetwork)
    optimizer = build_optimizer("AdamW", method.parameter_groups(), LR, 0.0)
    latent = size // bundle.vae_scale_factor
    batch_dict = {
        "latents": torch.randn(batch, 4, latent, latent, device=device),
        "prompts": [PROMPT] * batch,
        "loss_weight": None,
    }
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = method.loss(batch_dict)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


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


def plain_step(bundle, size: int, batch: int, device: torch.device) -> Callable[[], None]:
    import torch.nn.functional as F

    from liandan.models.attention_hooks import attention_layers, kv_input_width

    _, hypernetwork = _hypernetwork(bundle)
    text_encoder, unet, vae, scheduler = (
        bundle.text_encoders[0],
        bundle.unet,
        bundle.vae,
        bundle.noise_scheduler,
    )
    for module in (unet, vae, text_encoder):
        module.to(device).requires_grad_(False).eval()
    hypernetwork.to(device).train()
    for attn in attention_layers(unet).values():
        pair = hypernetwork.pair(kv_input_width(attn))  # the modules with their residual: x + f(x)
        if pair is not None:
            attn.set_processor(PlainHypernetworkAttention(*pair))
    optimizer = torch.optim.AdamW(hypernetwork.parameters(), lr=LR)
    pixels = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    ids = bundle.tokenizers[0]([PROMPT] * batch, padding="max_length", max_length=77, return_tensors="pt")
    ids = ids.input_ids.to(device)

    def step() -> None:
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            context = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        loss = F.mse_loss(unet(noisy, t, context).sample.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _sides(args, size: int) -> dict:
    device = torch.device(args.device)  # each side builds its own copy: both set attention processors
    return {
        "liandan": lambda: liandan_step(build_bundle(args.model), size, args.batch, device),
        "plain loop": lambda: plain_step(build_bundle(args.model), size, args.batch, device),
    }


COMPARISON = Comparison(
    "hn-step",
    "bench.hn_speed",
    _sides,
    lambda args, size: f"sd1 {args.model} {size}px bs{args.batch} fp32 AdamW, structure {LAYER_STRUCTURE!r}",
)


def main(argv: list[str] | None = None) -> None:
    run_comparison(COMPARISON, step_benchmark_args(argv, __doc__ or ""))


if __name__ == "__main__":
    main()
