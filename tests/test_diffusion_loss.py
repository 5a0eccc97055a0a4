import pytest
import torch

from liandan.models.tiny import tiny_bundle
from liandan.train.diffusion_loss import batch_added_conditioning, diffusion_loss


@pytest.fixture(scope="module")
def sd1():
    return tiny_bundle("sd1")


def _inputs(bundle, batch=2):
    torch.manual_seed(0)
    latents = torch.randn(batch, 4, 8, 8)
    context = torch.randn(batch, 77, bundle.unet.config.cross_attention_dim, requires_grad=True)
    return latents, context


def test_same_generator_gives_the_same_loss_and_gradient_reaches_the_context(sd1) -> None:
    latents, context = _inputs(sd1)
    a = diffusion_loss(sd1, latents, context, generator=torch.Generator().manual_seed(1))
    b = diffusion_loss(sd1, latents, context, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.item() > 0
    a.backward()
    assert context.grad is not None and context.grad.abs().sum() > 0


def test_a_methods_own_prediction_replaces_the_unet_call_with_the_same_noise_and_target(sd1) -> None:
    """The hook APT's guided prediction needs: same noisy input and timesteps, the method's prediction."""
    latents, context = _inputs(sd1)
    seen = {}

    def through_unet(noisy, timesteps, ctx, added):
        seen.update(noisy=noisy, timesteps=timesteps, added=added)
        return sd1.unet(noisy, timesteps, ctx).sample

    plain = diffusion_loss(sd1, latents, context, generator=torch.Generator().manual_seed(1))
    hooked = diffusion_loss(
        sd1, latents, context, generator=torch.Generator().manual_seed(1), predict=through_unet
    )
    assert torch.equal(plain, hooked) and seen["noisy"].shape == latents.shape and seen["added"] is None
    zero = diffusion_loss(sd1, latents, context, generator=torch.Generator().manual_seed(1),
                          predict=lambda noisy, t, ctx, added: torch.zeros_like(noisy))  # fmt: skip
    assert not torch.equal(zero, plain)  # the loss is taken from the hook's prediction


def test_sdxl_added_conditioning_comes_from_the_batch_sizes_and_none_for_sd1(sd1) -> None:
    from liandan.models.conditioning import Conditioning

    batch = {
        "original_size": torch.tensor([[96, 128], [64, 64]]),
        "crop_top_left": torch.tensor([[0, 8], [0, 0]]),
        "target_size": torch.tensor([[64, 64], [64, 64]]),
    }
    cond = Conditioning(torch.zeros(2, 77, 8), torch.ones(2, 8))
    assert batch_added_conditioning(sd1, batch, cond) is None
    sdxl = tiny_bundle("sdxl")
    added = batch_added_conditioning(sdxl, batch, cond)
    assert added["time_ids"].tolist() == [[96, 128, 0, 8, 64, 64], [64, 64, 0, 0, 64, 64]]
    assert torch.equal(added["text_embeds"], cond.pooled)


def test_v_prediction_uses_another_target(sd1) -> None:
    latents, context = _inputs(sd1)
    epsilon = diffusion_loss(sd1, latents, context, generator=torch.Generator().manual_seed(1))
    sd1.prediction_type = "v_prediction"
    try:
        v = diffusion_loss(sd1, latents, context, generator=torch.Generator().manual_seed(1))
    finally:
        sd1.prediction_type = "epsilon"
    assert not torch.allclose(epsilon, v)


def test_uniform_loss_weight_equals_no_weight_and_zero_weight_masks(sd1) -> None:
    latents, context = _inputs(sd1)
    plain = diffusion_loss(sd1, latents, context, generator=torch.Generator().manual_seed(2))
    ones = torch.ones(2, 1, 8, 8)
    weighted = diffusion_loss(
        sd1, latents, context, loss_weight=ones, generator=torch.Generator().manual_seed(2)
    )
    assert torch.allclose(plain, weighted, rtol=1e-5)
    # a half-transparent image: only the visible half counts, normalised, so the loss stays comparable
    half = torch.zeros(2, 1, 8, 8)
    half[..., :4] = 1
    masked = diffusion_loss(
        sd1, latents, context, loss_weight=half, generator=torch.Generator().manual_seed(2)
    )
    assert not torch.allclose(masked, plain) and 0.2 * plain < masked < 5 * plain


def test_gradient_checkpointing_of_a_frozen_eval_unet_recomputes_blocks_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TI/HN train through a frozen UNet in eval mode: checkpointing must still happen there, and change
    neither the loss nor the gradient."""
    import torch.utils.checkpoint

    from liandan.train.diffusion_loss import set_unet_gradient_checkpointing

    bundle = tiny_bundle("sd1")
    bundle.unet.requires_grad_(False).eval()
    real_checkpoint, calls = torch.utils.checkpoint.checkpoint, []

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)

    def loss_and_grad():
        latents, context = _inputs(bundle)
        loss = diffusion_loss(bundle, latents, context, generator=torch.Generator().manual_seed(1))
        loss.backward()
        return loss.detach(), context.grad

    plain_loss, plain_grad = loss_and_grad()
    assert not calls
    set_unet_gradient_checkpointing(bundle.unet, True)
    checkpointed_loss, checkpointed_grad = loss_and_grad()
    assert calls, "no UNet block was checkpointed"
    assert torch.equal(plain_loss, checkpointed_loss) and torch.allclose(plain_grad, checkpointed_grad)
    assert not any(isinstance(m, torch.nn.Dropout) and m.training for m in bundle.unet.modules())

    set_unet_gradient_checkpointing(bundle.unet, False)
    calls.clear()
    loss_and_grad()
    assert not calls


def test_freeze_for_training_freezes_casts_and_lays_the_unet_out_channels_last() -> None:
    from liandan.jobs import TrainSpec
    from liandan.train.diffusion_loss import freeze_for_training

    bundle = tiny_bundle("sd1")
    bundle.unet.train()
    freeze_for_training(bundle, torch.device("cpu"), TrainSpec(mixed_precision="bf16"))
    modules = [*bundle.text_encoders, bundle.unet, bundle.vae]
    assert not any(p.requires_grad for m in modules for p in m.parameters())
    assert not any(m.training for m in modules)
    assert bundle.unet.conv_in.weight.dtype == torch.bfloat16
    assert bundle.vae.encoder.conv_in.weight.dtype == torch.float32  # the VAE is not the method's to cast
    assert bundle.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def _hand_snr(t: int) -> float:
    """SNR of SD's scaled-linear schedule (the tiny bundle's) at timestep t, computed without diffusers."""
    import numpy as np

    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alpha_bar = np.cumprod(1 - betas)[t]
    return float(alpha_bar / (1 - alpha_bar))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_gamma_weights_each_sample_as_the_paper_says(sd1, prediction_type: str) -> None:
    """A prediction of zeros makes each sample's error the mean square of its target; with min-SNR on,
    each is scaled by min(snr, gamma)/snr (epsilon) or min(snr, gamma)/(snr + 1) (v)."""
    from liandan.jobs import TrainSpec

    latents, context = _inputs(sd1)
    timesteps, noise = torch.tensor([10, 900]), torch.randn(2, 4, 8, 8)
    gamma = 5.0
    snr = [_hand_snr(10), _hand_snr(900)]
    assert snr[0] > gamma > snr[1]  # one clipped, one not
    hand = [min(s, gamma) / (s + 1 if prediction_type == "v_prediction" else s) for s in snr]

    def loss(train: TrainSpec | None) -> torch.Tensor:
        return diffusion_loss(sd1, latents, context, noise=noise, timesteps=timesteps, train=train,
                              predict=lambda noisy, t, ctx, added: torch.zeros_like(noisy))  # fmt: skip

    sd1.prediction_type = prediction_type
    try:
        plain, weighted = loss(None), loss(TrainSpec(min_snr_gamma=gamma))
        off = loss(TrainSpec(min_snr_gamma=0.0))
        scheduler = sd1.noise_scheduler
        targets = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    finally:
        sd1.prediction_type = "epsilon"
    per_sample = (targets.float() ** 2).mean(dim=(1, 2, 3))
    assert plain == pytest.approx(float(per_sample.mean()), rel=1e-5)
    expected = (per_sample[0] * hand[0] + per_sample[1] * hand[1]) / 2
    assert weighted == pytest.approx(float(expected), rel=1e-5)
    assert off == plain  # 0 is off


def test_noise_offset_shifts_each_channel_of_the_drawn_noise(sd1) -> None:
    """kohya's offset: noise + offset * randn(b, c, 1, 1), drawn after the noise and timesteps."""
    from liandan.jobs import TrainSpec

    latents, context = _inputs(sd1)
    seen = {}

    def capture(noisy, t, ctx, added):
        seen.update(noisy=noisy.float(), t=t)
        return torch.zeros_like(noisy)

    diffusion_loss(sd1, latents, context, generator=torch.Generator().manual_seed(3), predict=capture,
                   train=TrainSpec(noise_offset=0.1))  # fmt: skip
    replay = torch.Generator().manual_seed(3)
    base = torch.randn(latents.shape, generator=replay)
    timesteps = torch.randint(0, 1000, (2,), generator=replay)
    offset = torch.randn((2, 4, 1, 1), generator=replay)
    assert torch.equal(seen["t"], timesteps)
    expected = sd1.noise_scheduler.add_noise(latents, base + 0.1 * offset, timesteps)
    assert torch.allclose(seen["noisy"], expected, atol=1e-6)
    # fixed noise (the validation set's) is used as given
    fixed = torch.randn(latents.shape)
    diffusion_loss(sd1, latents, context, noise=fixed, timesteps=timesteps, predict=capture,
                   train=TrainSpec(noise_offset=0.1))  # fmt: skip
    assert torch.allclose(seen["noisy"], sd1.noise_scheduler.add_noise(latents, fixed, timesteps), atol=1e-6)


def test_torch_compile_switch_compiles_the_unet_in_place_and_a_later_job_gets_the_eager_one_back() -> None:
    from liandan.jobs import TrainSpec
    from liandan.train.diffusion_loss import freeze_for_training

    bundle = tiny_bundle("sd1")
    names = list(bundle.unet.state_dict())
    freeze_for_training(bundle, torch.device("cpu"), TrainSpec(torch_compile=True))
    assert bundle.unet._compiled_call_impl is not None  # compiled on its first call
    assert list(bundle.unet.state_dict()) == names  # the files it saves keep their keys
    freeze_for_training(bundle, torch.device("cpu"), TrainSpec())
    assert bundle.unet._compiled_call_impl is None


@pytest.mark.slow
def test_a_compiled_unet_gives_the_eager_loss_and_gradient(sd1) -> None:
    """Minutes of compiling on 2 cores: the numbers a compiled training step trains on are the eager ones,
    also at a second shape (another bucket, a preview's batch), which compiles a graph of its own."""
    from liandan.train.diffusion_loss import set_unet_compiled

    latents, context = _inputs(sd1)
    larger = torch.randn(2, *latents.shape[1:2], *(2 * n for n in latents.shape[2:]))
    shapes = [(latents, context), (larger, context[:1].expand(2, -1, -1).clone().requires_grad_())]

    def loss_and_grad(inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss = diffusion_loss(sd1, *inputs, generator=torch.Generator().manual_seed(3))
        return loss, torch.autograd.grad(loss, inputs[1])[0]

    eager = [loss_and_grad(inputs) for inputs in shapes]
    set_unet_compiled(sd1.unet, True)
    try:
        for inputs, (eager_loss, eager_grad) in [*zip(shapes, eager), (shapes[0], eager[0])]:
            for _ in range(2):  # the second call runs the cached graph
                compiled, compiled_grad = loss_and_grad(inputs)
                torch.testing.assert_close(compiled, eager_loss, rtol=1e-4, atol=1e-5)
                off = float((compiled_grad - eager_grad).norm() / eager_grad.norm())
                if inputs is shapes[1] and off > 1e-3 and torch.__version__ < "2.14":
                    pytest.xfail(  # measured: 6.1% here; 17.5% on a bare UNet, with diffusers 0.31 and
                        # 0.42 alike; torch 2.14.1 agrees to 4e-6. The job warns (compile_warning).
                        f"torch {torch.__version__}: the compiled gradient at a second shape is {off:.1%} "
                        "off the eager one (torch 2.13's compiler)"
                    )
                torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-3, atol=1e-6)
    finally:
        set_unet_compiled(sd1.unet, False)
        torch._dynamo.reset()  # its caches hold fake tensors and graphs of this UNet
