"""The plain loops the step benchmarks measure liandan against do the same model work: a ratio against a
baseline that computes something else would mean nothing."""

from __future__ import annotations

import pytest
import torch

from bench.hn_speed import PlainHypernetworkAttention, _hypernetwork
from bench.lora_speed import NETWORKS, _network, peft_config
from bench.ti_speed import build_bundle


def test_the_plain_hypernetwork_processor_gives_the_output_of_liandans_attention_hooks() -> None:
    from liandan.models.attention_hooks import attention_layers, install_kv_transforms, kv_input_width

    ours, plain = build_bundle("tiny"), build_bundle("tiny")
    _, hypernetwork = _hypernetwork(ours)
    hypernetwork.eval()
    for module in hypernetwork.modules():  # a fresh one starts near identity: make it change the output
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.05)
    install_kv_transforms(ours.unet, [hypernetwork])
    for attn in attention_layers(plain.unet).values():
        pair = hypernetwork.pair(kv_input_width(attn))
        if pair is not None:
            attn.set_processor(PlainHypernetworkAttention(*pair))
    latents, timesteps = torch.randn(1, 4, 8, 8), torch.tensor([10])
    context = torch.randn(1, 77, ours.unet.config.cross_attention_dim)
    with torch.no_grad():
        untouched = build_bundle("tiny").unet.eval()(latents, timesteps, context).sample
        expected = ours.unet.eval()(latents, timesteps, context).sample
        got = plain.unet.eval()(latents, timesteps, context).sample
    assert (expected - untouched).abs().max() > 1e-3
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("network_type", NETWORKS)
def test_the_peft_baseline_adapts_exactly_the_modules_liandans_network_targets(network_type: str) -> None:
    from peft import inject_adapter_in_model

    bundle = build_bundle("tiny")
    config = peft_config(bundle, network_type)
    ours = {id(lyco.org_module[0]) for lyco in _network(bundle, network_type).networks.values()}
    inject_adapter_in_model(config, bundle.unet)
    adapted = {
        id(module.base_layer)
        for module in bundle.unet.modules()
        if hasattr(module, "base_layer") and hasattr(module, "active_adapters")
    }
    assert adapted == ours
    assert set(config.rank_pattern.values()) == ({8, 4} if network_type in ("locon", "loha", "lokr") else {8})


def test_the_model_work_side_sits_just_before_the_plain_loop_and_only_when_asked() -> None:
    from argparse import Namespace

    from bench.harness import MODEL_WORK, model_work_side

    sides = {"liandan": lambda: None, "liandan compiled": lambda: None, "plain loop": lambda: None}
    assert model_work_side(Namespace(model_work=False), sides, lambda: None) == sides
    assert list(model_work_side(Namespace(model_work=True), sides, lambda: None)) == [
        "liandan",
        "liandan compiled",
        MODEL_WORK,
        "plain loop",
    ]


def _vae_encodes(bundle) -> list[int]:
    calls: list[int] = []
    bundle.vae.encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("model_work_only", [False, True])
def test_the_plain_loops_model_work_alone_encodes_once_and_steps_nothing(model_work_only: bool) -> None:
    """The floor side runs the plain loop's forward and backward on inputs encoded once and leaves the
    weights as they were; the plain loop itself encodes every step and trains."""
    from bench.dreambooth_speed import diffusers_step as dreambooth_plain
    from bench.ti_speed import diffusers_step as ti_plain

    dreambooth = build_bundle("tiny")
    dreambooth_calls = _vae_encodes(dreambooth)
    weight = dreambooth.unet.conv_in.weight
    before = weight.detach().clone()
    step = dreambooth_plain(dreambooth, 64, 1, torch.device("cpu"), model_work_only=model_work_only)
    step()
    step()
    assert len(dreambooth_calls) == (1 if model_work_only else 2)
    assert torch.equal(weight, before) == model_work_only
    assert weight.grad is None  # dropped after every step

    ti = build_bundle("tiny")
    ti_calls = _vae_encodes(ti)
    step = ti_plain(ti, 64, 1, torch.device("cpu"), negative="benchti-neg", model_work_only=model_work_only)
    table = ti.text_encoders[0].get_input_embeddings().weight
    before = table.detach().clone()
    step()  # backward reaches the frozen table's output (it would raise if nothing took a gradient)
    step()
    assert len(ti_calls) == (1 if model_work_only else 2)
    assert torch.equal(table, before) == model_work_only
