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
