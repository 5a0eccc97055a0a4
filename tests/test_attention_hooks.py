"""K/V transforms on attention: exact when idle, A1111's x + f(x)*strength when active, exact removal."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from liandan.models.attention_hooks import (
    KVTransform,
    KVTransformProcessor,
    attention_layers,
    install_kv_transforms,
    kv_input_width,
)
from liandan.models.tiny import tiny_bundle


class MLPTransform:
    """A hypernetwork-like KVTransform: one small MLP pair per width."""

    def __init__(self, widths: list[int], strength: float = 1.0, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.strength = strength
        self.pairs = {w: (self._mlp(w), self._mlp(w)) for w in widths}

    @staticmethod
    def _mlp(width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))

    def kv_modules(self, width: int):
        return self.pairs.get(width)

    def parameters(self):
        return [p for pair in self.pairs.values() for m in pair for p in m.parameters()]


@pytest.fixture(scope="module")
def sd1():
    return tiny_bundle("sd1")


@pytest.fixture(scope="module")
def sdxl():
    return tiny_bundle("sdxl")


def _unet_inputs(bundle, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    width = bundle.unet.config.cross_attention_dim
    inputs = {
        "sample": torch.randn(2, 4, 8, 8, generator=g),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(2, 77, width, generator=g),
    }
    if bundle.is_sdxl:
        pooled = bundle.unet.config.projection_class_embeddings_input_dim - 6 * 8
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, pooled, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2),
        }
    return inputs


def _run(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


def _widths(unet) -> list[int]:
    return sorted({kv_input_width(attn) for attn in attention_layers(unet).values()})


def test_idle_hooks_leave_the_unet_bit_identical(sd1):
    unet, inputs = sd1.unet, _unet_inputs(sd1)
    reference = _run(unet, inputs)
    assert _widths(unet) == [32, 64, 128]

    handle = install_kv_transforms(unet, [])
    assert handle.layer_paths == []
    assert torch.equal(_run(unet, inputs), reference)
    handle.remove()

    # strength 0 goes through our processor on every layer: it must compute exactly what diffusers does
    transform = MLPTransform(_widths(unet), strength=0.0)
    handle = install_kv_transforms(unet, [transform])
    assert len(handle.layer_paths) == len(attention_layers(unet))
    assert torch.equal(_run(unet, inputs), reference)
    handle.remove()


def test_active_transform_changes_output_and_remove_restores_it(sd1):
    unet, inputs = sd1.unet, _unet_inputs(sd1)
    originals = dict(unet.attn_processors)
    state_keys = set(unet.state_dict())
    reference = _run(unet, inputs)

    transform = MLPTransform([32, 128], strength=1.0)
    handle = install_kv_transforms(unet, [transform])
    changed = _run(unet, inputs)
    assert (changed - reference).abs().max() > 1e-4
    assert set(unet.state_dict()) == state_keys  # the transform's weights stay out of the UNet
    # only layers of covered widths were hooked
    for path in handle.layer_paths:
        assert kv_input_width(unet.get_submodule(path)) in (32, 128)

    transform.strength = 0.5  # strength is read at each call
    assert not torch.equal(_run(unet, inputs), changed)

    handle.remove()
    assert all(unet.attn_processors[key] is processor for key, processor in originals.items())
    assert torch.equal(_run(unet, inputs), reference)


def _direct_attention(attn, x, context, k_in, v_in) -> torch.Tensor:
    """softmax(Q Kᵀ/√d) V per head, with K and V computed from given inputs."""
    heads = attn.heads
    q, k, v = attn.to_q(x), attn.to_k(k_in), attn.to_v(v_in)
    b, n, inner = q.shape
    d = inner // heads

    def split(t):
        return t.reshape(b, -1, heads, d).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(b, n, inner)
    return attn.to_out[0](out)


@pytest.mark.parametrize("kind", ["cross", "self"])
def test_processor_matches_direct_attention_with_chained_transforms(sd1, kind):
    block = sd1.unet.down_blocks[0].attentions[0].transformer_blocks[0]
    attn = block.attn2 if kind == "cross" else block.attn1
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 32, generator=g)
    context = torch.randn(2, 77, 32, generator=g) if kind == "cross" else None
    first, second = MLPTransform([32], strength=0.7, seed=1), MLPTransform([32], strength=1.3, seed=2)

    handle = install_kv_transforms(sd1.unet, [first, second])
    try:
        assert isinstance(attn.processor, KVTransformProcessor)
        with torch.no_grad():
            hooked = attn(x, encoder_hidden_states=context)
    finally:
        handle.remove()

    with torch.no_grad():
        kv = x if context is None else context
        k_in, v_in = kv, kv
        for t in (first, second):  # A1111 chains hypernetworks: each sees the previous output
            k_fn, v_fn = t.kv_modules(32)
            k_in, v_in = k_in + k_fn(k_in) * t.strength, v_in + v_fn(v_in) * t.strength
        expected = _direct_attention(attn, x, context, k_in, v_in)
    torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)
    # and the transform really mattered
    with torch.no_grad():
        plain = _direct_attention(attn, x, context, kv, kv)
    assert (hooked - plain).abs().max() > 1e-4


def test_gradients_reach_the_transform_through_a_frozen_unet(sd1):
    unet, inputs = sd1.unet, _unet_inputs(sd1)
    flags = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(False)
    transform = MLPTransform([32, 64, 128])
    handle = install_kv_transforms(unet, [transform])
    try:
        unet(**inputs).sample.square().mean().backward()
    finally:
        handle.remove()
        for p, flag in zip(unet.parameters(), flags):
            p.requires_grad_(flag)
    assert all(p.grad is not None for p in transform.parameters())
    assert sum(p.grad.abs().sum() for p in transform.parameters()) > 0


def test_handles_are_removed_last_first(sd1):
    unet = sd1.unet
    first = install_kv_transforms(unet, [MLPTransform([32])])
    second = install_kv_transforms(unet, [MLPTransform([32])])
    with pytest.raises(RuntimeError, match="reverse order"):
        first.remove()
    second.remove()
    first.remove()
    assert not any(isinstance(p, KVTransformProcessor) for p in unet.attn_processors.values())


def test_rejects_objects_that_are_not_transforms(sd1):
    with pytest.raises(TypeError, match="KVTransform"):
        install_kv_transforms(sd1.unet, [nn.Linear(2, 2)])
    assert isinstance(MLPTransform([32]), KVTransform)


def test_sdxl_context_and_self_attention_widths(sdxl):
    unet, inputs = sdxl.unet, _unet_inputs(sdxl)
    assert _widths(unet) == [64, 128, 192]
    reference = _run(unet, inputs)
    handle = install_kv_transforms(unet, [MLPTransform([192], strength=0.0)])
    assert torch.equal(_run(unet, inputs), reference)
    handle.remove()

    handle = install_kv_transforms(unet, [MLPTransform([192, 64])])
    assert (_run(unet, inputs) - reference).abs().max() > 1e-4
    handle.remove()
    assert torch.equal(_run(unet, inputs), reference)


def _output_and_grads(unet, inputs, transform) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = unet(**inputs).sample
    grads = torch.autograd.grad(out.square().mean(), transform.parameters())
    return out.detach(), list(grads)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_context_kv_is_computed_once_per_forward_with_the_same_result_and_gradients(sd1, checkpointing):
    unet, inputs = sd1.unet, _unet_inputs(sd1)
    context_width = unet.config.cross_attention_dim
    transform = MLPTransform(_widths(unet), strength=1.0)
    calls = []
    k_fn = transform.pairs[context_width][0]
    counter = k_fn.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    handle = install_kv_transforms(unet, [transform])
    cross = [p for p in handle.layer_paths if unet.get_submodule(p).is_cross_attention]
    assert len(cross) > 1  # several cross-attention layers share one computation
    if checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()
    try:
        shared_out, shared_grads = _output_and_grads(unet, inputs, transform)
        # 77 context tokens: once for the whole forward, not once per cross-attention layer
        assert calls.count(77) == 1  # and the checkpointed blocks' recompute reuses it
        for path in cross:  # each layer computing its own, as without the sharing
            unet.get_submodule(path).processor.shared = None
        calls.clear()
        own_out, own_grads = _output_and_grads(unet, inputs, transform)
        # the hook's unused one, then in every layer, and again in each block the backward recomputes
        assert calls.count(77) == 1 + len(cross) * (2 if checkpointing else 1)
    finally:
        unet.disable_gradient_checkpointing()
        unet.eval()
        counter.remove()
        handle.remove()
    torch.testing.assert_close(shared_out, own_out)
    for shared, own in zip(shared_grads, own_grads, strict=True):
        torch.testing.assert_close(shared, own)


def test_a_transform_drawing_dropout_gives_each_cross_attention_layer_its_own_mask(sd1) -> None:
    unet, inputs = sd1.unet, _unet_inputs(sd1)
    context_width = unet.config.cross_attention_dim
    transform = MLPTransform(_widths(unet), strength=1.0)
    k_fn = transform.pairs[context_width][0]
    k_fn.insert(1, nn.Dropout(0.3))  # an A1111 hypernetwork with a dropout structure, in training mode
    calls = []
    counter = k_fn.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    handle = install_kv_transforms(unet, [transform])
    cross = [p for p in handle.layer_paths if unet.get_submodule(p).is_cross_attention]
    try:
        with torch.no_grad():
            unet(**inputs)
            assert calls.count(77) == len(cross)  # one draw per layer, none shared
            k_fn.eval()
            calls.clear()
            unet(**inputs)
            assert calls.count(77) == 1  # no dropout drawn: shared again
    finally:
        counter.remove()
        handle.remove()
