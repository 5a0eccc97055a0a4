"""Textual-inversion step time: liandan's method against a plain diffusers-example loop at identical settings.

    python -m bench.ti_speed --smoke                 # tiny SD1 at 64 px, one repeat: proves it runs
    python -m bench.ti_speed --model tiny --size 64 128 --record
    python -m bench.ti_speed --model sd15 --size 64 128 --repeats 3 --record   # random SD1.5-sized weights
    python -m bench.ti_speed --device cuda --model sd15 --size 512 --batch 8    # (see bench/gpu.py)

Both sides do one optimizer step (batch of B, one prompt with the embedding's name, AdamW). liandan: the
cached latents, frozen modules in eval mode, the vectors as the only parameters (TextualInversion.loss).
Baseline, as diffusers' examples/textual_inversion does it: the VAE encodes the pixels every step, the
placeholder token is added to the tokenizer, the whole token-embedding table takes gradients and AdamW
steps, and the other rows are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from bench.harness import (
    Comparison,
    fresh_sides,
    method_context,
    method_step,
    run_comparison,
    step_benchmark_args,
)

PROMPT = "a painting of a cat, art by benchti"
LR = 0.005


def build_bundle(model: str):
    from liandan.models.model_spec import assemble_bundle, build_modules, standard_spec
    from liandan.models.tiny import tiny_bundle

    if model == "tiny":
        return tiny_bundle("sd1")
    spec = standard_spec("sd1")
    torch.manual_seed(0)
    text_encoders, unet, vae = build_modules(spec, empty=False)  # random init at full SD1.5 size
    return assemble_bundle(spec, text_encoders, unet, vae, name="sd15-random")


def liandan_method(
    bundle,
    size: int,
    device: torch.device,
    train,
    folder: Path = Path(),
):
    """The textual-inversion job's method on `bundle` at `size` with the TrainSpec `train`; what it saves
    goes under `folder`."""
    from liandan.jobs import DataSpec, TextualInversionJob
    from liandan.methods.textual_inversion import TextualInversion
    from liandan.models.embedding_vectors import new_embedding

    job = TextualInversionJob(name="benchti", train=train, data=DataSpec(width=size, height=size))
    context = method_context(job, bundle, device, _Prompts())
    context.run_dir = folder
    embedding = new_embedding(bundle, "benchti", "a painting", 1)
    return TextualInversion(context, embedding, folder / "benchti.pt")


def liandan_step(
    bundle,
    size: int,
    batch: int,
    device: torch.device,
    mixed_precision: str = "no",
    torch_compile: bool = False,
) -> Callable[[], None]:
    from liandan.jobs import TrainSpec

    train = TrainSpec(mixed_precision=mixed_precision, torch_compile=torch_compile)
    method = liandan_method(bundle, size, device, train)
    latent = size // bundle.vae_scale_factor
    cached = torch.randn(batch, 4, latent, latent, device=device)  # what the latent cache hands over
    batch_dict = {"latents": cached, "prompts": [PROMPT] * batch}
    return method_step(method, batch_dict, LR, device, mixed_precision)


class _Prompts:
    def __len__(self) -> int:
        return 1

    def prompt(self, index: int, epoch: int) -> str:
        return PROMPT


def diffusers_step(
    bundle,
    size: int,
    batch: int,
    device: torch.device,
    negative: str | None = None,
    cfg: float = 4.0,
    model_work_only: bool = False,
) -> Callable[[], None]:
    """The diffusers example's step. With `negative` (APT's baseline, as DreamArtist trains): a second new
    token for the negative embedding, its prompt encoded with the positive one, the UNet run on both and the
    prediction `negative + cfg * (positive - negative)`. With `model_work_only` (harness.model_work_side):
    the VAE encodes once, the token table is frozen and the gradient stops at its output (the least any
    embedding trainer must compute: the text encoder's and the UNet's backward), no optimizer step."""
    import copy

    import torch.nn.functional as F

    tokenizer = copy.deepcopy(bundle.tokenizers[0])
    text_encoder, unet, vae = bundle.text_encoders[0], bundle.unet, bundle.vae
    scheduler = bundle.noise_scheduler
    names = ["benchti", *([negative] if negative else [])]
    tokenizer.add_tokens(names)
    text_encoder.resize_token_embeddings(len(tokenizer))
    for module in (unet, vae, text_encoder):
        module.to(device).requires_grad_(False)
    text_encoder.train()
    table = text_encoder.get_input_embeddings()
    table.weight.requires_grad_(not model_work_only)
    if model_work_only:
        table.register_forward_hook(lambda _module, _input, output: output.detach().requires_grad_())
    original = table.weight.detach().clone()
    optimizer = torch.optim.AdamW([table.weight], lr=LR)
    pixels = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    prompts = [PROMPT] * batch + ([negative] * batch if negative else [])
    ids = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
    keep = torch.ones(len(tokenizer), dtype=torch.bool, device=device)
    keep[tokenizer.convert_tokens_to_ids(names)] = False

    def encode() -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor

    encoded = encode() if model_work_only else None

    def step() -> None:
        latents = encode() if encoded is None else encoded
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        context = text_encoder(ids)[0]
        if negative:
            positive, negative_prediction = unet(torch.cat([noisy] * 2), t.repeat(2), context).sample.chunk(2)
            prediction = negative_prediction + cfg * (positive - negative_prediction)
        else:
            prediction = unet(noisy, t, context).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        if model_work_only:
            return
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            table.weight[keep] = original[keep]

    return step


COMPARISON = Comparison(
    "ti-step",
    "bench.ti_speed",
    fresh_sides({"liandan": liandan_step, "diffusers loop": diffusers_step}, build_bundle),
    lambda args, size: f"sd1 {args.model} {size}px bs{args.batch} fp32 AdamW",
)


def main(argv: list[str] | None = None) -> None:
    run_comparison(COMPARISON, step_benchmark_args(argv, __doc__ or ""))


if __name__ == "__main__":
    main()
