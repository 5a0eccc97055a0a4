"""Hypernetwork modules: A1111's layer layout, activations, inits, strength rule and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from liandan.errors import ConfigError
from liandan.models.hypernetwork_modules import (
    Hypernetwork,
    HypernetworkModule,
    activation_classes,
    check_sizes,
    default_sizes,
    parse_dropout_structure,
    parse_layer_structure,
)


def _kinds(module: HypernetworkModule) -> list[str]:
    return [type(layer).__name__ for layer in module.linear]


def test_layer_order_matches_a1111_goldhn_b_layout() -> None:
    module = HypernetworkModule(
        32, [1, 2, 2, 1], "swish", "KaimingNormal", add_layer_norm=True, dropout_structure=[0, 0.3, 0.3, 0]
    )
    assert _kinds(module) == [
        "Linear", "Hardswish", "LayerNorm", "Dropout",
        "Linear", "Hardswish", "LayerNorm", "Dropout",
        "Linear", "LayerNorm",
    ]  # fmt: skip
    assert {k.rsplit(".", 1)[0] for k in module.state_dict()} == {f"linear.{i}" for i in (0, 2, 4, 6, 8, 9)}


def test_activate_output_and_linear() -> None:
    assert _kinds(HypernetworkModule(8, [1, 2, 1], "relu", activate_output=True)) == [
        "Linear", "ReLU", "Linear", "ReLU",
    ]  # fmt: skip
    assert _kinds(HypernetworkModule(8, [1, 2, 1], "linear")) == ["Linear", "Linear"]
    assert _kinds(HypernetworkModule(8, [1, 1.5, 1], None)) == ["Linear", "Linear"]
    assert HypernetworkModule(8, [1, 1.5, 1]).linear[0].out_features == 12


def test_activation_names_as_a1111() -> None:
    names = activation_classes()
    assert names["swish"] is nn.Hardswish
    assert names["linear"] is None
    for name in (
        "relu",
        "leakyrelu",
        "elu",
        "tanh",
        "sigmoid",
        "gelu",
        "silu",
        "mish",
        "hardswish",
        "softsign",
    ):
        assert name in names
    assert names["gelu"] is nn.GELU


def test_normal_init_and_layernorm_init() -> None:
    torch.manual_seed(0)
    module = HypernetworkModule(256, [1, 2, 1], "relu", "Normal", add_layer_norm=True)
    linear, norm = module.linear[0], module.linear[2]
    assert abs(linear.weight.std().item() - 0.01) < 0.001
    assert torch.count_nonzero(linear.bias) == 0
    assert abs(norm.weight.std().item() - 0.01) < 0.002  # A1111 draws LayerNorm weights N(0, 0.01) too
    kaiming = HypernetworkModule(256, [1, 2, 1], "relu", "KaimingNormal").linear[0]
    assert abs(kaiming.weight.std().item() - (2 / 256) ** 0.5) < 0.01
    xavier = HypernetworkModule(256, [1, 2, 1], "relu", "XavierUniform").linear[0]
    assert xavier.weight.abs().max().item() <= (6 / (256 + 512)) ** 0.5 + 1e-6


def test_forward_strength_applies_only_in_eval() -> None:
    torch.manual_seed(0)
    net = Hypernetwork("h", [16], [1, 2, 1], "relu", "XavierNormal")
    k, _v = net.pair(16)
    x = torch.randn(2, 5, 16)
    delta = k.linear(x)
    net.strength = 0.5
    assert torch.allclose(k(x), x + 0.5 * delta)
    net.strength = 0.0
    assert torch.equal(k(x), x)
    net.train()
    assert torch.allclose(k(x), x + delta)  # training ignores the strength (A1111)


def test_hypernetwork_kv_lookup() -> None:
    net = Hypernetwork("h", [8, 16], [1, 2, 1])
    assert net.sizes == [8, 16]
    assert net.pair(32) is None
    k, v = net.pair(8)
    assert k is not v
    context = torch.randn(1, 3, 32)
    k_in, v_in = net(context)
    assert k_in is context and v_in is context
    assert not net.training


@pytest.mark.parametrize("text", ["1, 2", "2, 1", "1, abc, 1", "1, -2, 1", "1", "", "2, 2, 2", "1, 0, 1"])
def test_bad_layer_structures(text: str) -> None:
    with pytest.raises(ConfigError, match="layer structure"):
        parse_layer_structure(text)


def test_layer_structure_parses_ui_text() -> None:
    assert parse_layer_structure("1, 2, 1") == [1.0, 2.0, 1.0]
    assert parse_layer_structure("1,1.5 ,2,1") == [1.0, 1.5, 2.0, 1.0]


def test_unknown_activation_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"'swishy'.*leakyrelu.*swish"):
        HypernetworkModule(8, [1, 2, 1], "swishy")


def test_unknown_weight_init() -> None:
    with pytest.raises(ConfigError, match="KaimingNormal"):
        HypernetworkModule(8, [1, 2, 1], "relu", "Uniform")


def test_dropout_structure_parsing() -> None:
    # A1111's legacy default: dropout after hidden layers, after the last hidden one only if asked
    assert parse_dropout_structure("", [1, 2, 2, 1], True, False) == [0, 0.3, 0, 0]
    assert parse_dropout_structure("", [1, 2, 2, 1], True, True) == [0, 0.3, 0.3, 0]
    assert parse_dropout_structure("", [1, 2, 1], True, True) == [0, 0.3, 0]
    assert parse_dropout_structure("0, 0.3, 0.3, 0", [1, 2, 2, 1], False, False) == [0, 0, 0, 0]
    assert parse_dropout_structure("0, 0.1, 0.2, 0", [1, 2, 2, 1], True, False) == [0, 0.1, 0.2, 0]


@pytest.mark.parametrize("text", ["0, 0.3, 0", "0, 1, 0, 0", "0, -0.1, 0, 0", "0, x, 0, 0", "0.2, 0, 0, 0"])
def test_bad_dropout_structures(text: str) -> None:
    with pytest.raises(ConfigError, match="dropout structure"):
        parse_dropout_structure(text, [1, 2, 2, 1], True, False)


def test_sizes_against_model_widths() -> None:
    check_sizes(default_sizes("sd1"), [320, 640, 1280, 768])
    with pytest.raises(ConfigError, match=r"\[768\].*1024"):
        check_sizes([768, 320], [320, 640, 1280, 1024])
    with pytest.raises(ConfigError, match="no hypernetwork sizes"):
        check_sizes([], [320])


def test_default_sizes() -> None:
    assert default_sizes("sd1") == (768, 320, 640, 1280)
    assert 1024 in default_sizes("sd2")
    assert set(default_sizes("sdxl")) == {640, 1280, 2048}
    with pytest.raises(ConfigError):
        default_sizes("sd3")  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_default_sizes_are_the_attention_widths_of_the_real_configs(family: str) -> None:
    import json

    import liandan.models

    config = Path(liandan.models.__file__).parent / "configs" / f"{family}.json"
    unet = json.loads(config.read_text())["unet"]
    attention_channels = {
        channels
        for channels, kind in zip(unet["block_out_channels"], unet["down_block_types"])
        if kind.startswith("CrossAttn")
    }
    assert set(default_sizes(family)) == attention_channels | {unet["cross_attention_dim"]}  # type: ignore[arg-type]


def test_kv_modules_follow_the_attention_hook_contract() -> None:
    """The hook computes x + f(x) * strength from kv_modules: that must equal A1111's module output."""
    from liandan.models.attention_hooks import KVTransform

    torch.manual_seed(0)
    net = Hypernetwork("h", [16], [1, 2, 1], "relu", "XavierNormal")
    assert isinstance(net, KVTransform)
    net.strength = 0.7
    k_fn, v_fn = net.kv_modules(16)
    k_module, v_module = net.pair(16)
    x = torch.randn(2, 5, 16)
    assert torch.allclose(x + k_fn(x) * net.strength, k_module(x))
    assert torch.allclose(x + v_fn(x) * net.strength, v_module(x))
    assert net.kv_modules(17) is None
    net.train()
    assert net.strength == 1.0  # A1111 trains at full strength
    net.eval()
    assert net.strength == 0.7


@pytest.mark.slow
def test_golden_hypernetwork_changes_the_tiny_unet_through_the_hooks(fixtures_dir: Path) -> None:
    from liandan.formats.hypernetwork import load_hypernetwork
    from liandan.models.attention_hooks import install_kv_transforms
    from liandan.models.tiny import tiny_bundle

    unet = tiny_bundle("sd1").unet.eval()
    net = load_hypernetwork(fixtures_dir / "hypernetworks" / "goldhn_b.pt")
    net.pair(32)[0].linear[0].weight.data *= 100  # goldhn_b is untrained (N(0, 0.01)): make it visible
    torch.manual_seed(0)
    latents, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        plain = unet(latents, 10, encoder_hidden_states=context).sample
        handle = install_kv_transforms(unet, [net])
        assert handle.layer_paths  # the 32/64/128 attention layers got the modules
        net.strength = 0.0
        zero = unet(latents, 10, encoder_hidden_states=context).sample
        net.strength = 1.0
        full = unet(latents, 10, encoder_hidden_states=context).sample
        handle.remove()
    assert torch.allclose(zero, plain, atol=1e-6)
    assert (full - plain).abs().max() > 1e-4
