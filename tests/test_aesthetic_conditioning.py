"""The aesthetic-gradients conditioning hook (models/aesthetic_conditioning.py) on the tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from liandan.errors import ConfigError, FormatError
from liandan.formats.aesthetic import AestheticEmbedding, load_aesthetic
from liandan.jobs import AestheticSettings
from liandan.models import clip_vision
from liandan.models.aesthetic_conditioning import infotext_fields, make_conditioner, slerp
from liandan.models.clip_vision import FEATURE_KEYS, load_towers
from liandan.models.conditioning import PromptEncoder
from liandan.models.sampling import generate
from liandan.models.tiny import tiny_bundle

PROMPT = "a red (cat:1.2), oil painting"
ON = AestheticSettings(weight=0.9, steps=3, learn_rate=0.005)


def random_embedding(bundle, tmp_path: Path, seed: int = 0) -> AestheticEmbedding:
    generator = torch.Generator().manual_seed(seed)
    towers = load_towers(bundle, tmp_path)
    features = {
        key: torch.nn.functional.normalize(torch.randn(1, tower.width, generator=generator), dim=-1)
        for key, tower in zip(FEATURE_KEYS[bundle.family], towers)
    }
    return AestheticEmbedding(features, family=bundle.family, name="look")


def image(bundle, hook=None) -> np.ndarray:
    picture = generate(
        bundle, PROMPT, steps=3, cfg_scale=5.0, seed=7, width=64, height=64, conditioning_hook=hook
    )
    return np.asarray(picture, dtype=np.int16)


@pytest.fixture(scope="module")
def sd1():
    return tiny_bundle("sd1")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_weight_and_steps_change_the_conditioning_and_the_image_and_zero_changes_nothing(
    family, tmp_path
) -> None:
    bundle = tiny_bundle(family)
    conditioner = make_conditioner(bundle, random_embedding(bundle, tmp_path), tmp_path)
    before = {name: p.clone() for name, p in bundle.text_encoders[-1].named_parameters()}
    plain = PromptEncoder(bundle).encode([PROMPT])
    adapted = conditioner.apply([PROMPT], plain, ON)
    assert adapted.context.shape == plain.context.shape
    assert not torch.allclose(adapted.context, plain.context)
    if family == "sdxl":  # the pooled output of OpenCLIP-G moves too
        assert not torch.allclose(adapted.pooled, plain.pooled)

    reference = image(bundle)
    assert np.abs(image(bundle, lambda p, c: conditioner.apply(p, c, ON)) - reference).max() > 0
    for off in (ON.replace(weight=0.0), ON.replace(steps=0)):
        assert conditioner.apply([PROMPT], plain, off) is plain
        assert np.array_equal(image(bundle, lambda p, c, off=off: conditioner.apply(p, c, off)), reference)
    # the model's own encoders were never touched: only copies were trained
    assert all(torch.equal(p, before[name]) for name, p in bundle.text_encoders[-1].named_parameters())


def test_the_adapted_copy_moves_toward_the_embedding(sd1, tmp_path) -> None:
    embedding = random_embedding(sd1, tmp_path)
    conditioner = make_conditioner(sd1, embedding, tmp_path)
    encoder = PromptEncoder(sd1)
    ids = encoder.input_ids(0, encoder.tokenize(PROMPT).chunks)
    target = conditioner.targets[0]
    with torch.no_grad():
        start = float(conditioner._features(0, sd1.text_encoders[0], ids) @ target.T)
    conditioner.adapted(PROMPT, ON.replace(steps=10))
    with torch.no_grad():
        end = float(conditioner._features(0, conditioner._copies[0], ids) @ target.T)
    assert end > start + 0.05


def test_the_adapted_conditioning_is_cached_per_prompt_and_settings(sd1, tmp_path, monkeypatch) -> None:
    conditioner = make_conditioner(sd1, random_embedding(sd1, tmp_path), tmp_path)
    conditioner.cache_size = 2
    # nothing is read from disk per prompt once the conditioner exists
    monkeypatch.setattr(clip_vision, "weight_paths", lambda *a, **k: pytest.fail("read weights per prompt"))
    plain = PromptEncoder(sd1).encode([PROMPT])
    first = conditioner.apply([PROMPT], plain, ON)
    torch.testing.assert_close(conditioner.apply([PROMPT], plain, ON).context, first.context, rtol=0, atol=0)
    assert conditioner.adaptations == 1
    # the blend is not part of the adaptation: another weight reuses the adapted encoding
    assert not torch.equal(conditioner.apply([PROMPT], plain, ON.replace(weight=0.5)).context, first.context)
    assert conditioner.adaptations == 1
    conditioner.apply([PROMPT], plain, ON.replace(learn_rate=0.001))
    conditioner.apply(["another prompt"], PromptEncoder(sd1).encode(["another prompt"]), ON)
    assert conditioner.adaptations == 3
    again = conditioner.apply([PROMPT], plain, ON)  # evicted (least recently used of 2): adapted again
    assert conditioner.adaptations == 4
    torch.testing.assert_close(again.context, first.context, rtol=0, atol=0)  # and the same


def test_text_rotates_the_target_and_negative_text_the_other_way(sd1, tmp_path) -> None:
    conditioner = make_conditioner(sd1, random_embedding(sd1, tmp_path), tmp_path)
    plain = PromptEncoder(sd1).encode([PROMPT])
    results = [
        conditioner.apply([PROMPT], plain, ON.replace(text=text, text_is_negative=negative, slerp_angle=0.5))
        for text, negative in (("", False), ("blue sky", False), ("blue sky", True))
    ]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not torch.allclose(results[a].context, results[b].context)


def test_slerp_blends_on_the_sphere_and_blend_weights_the_adapted_side() -> None:
    from liandan.models.aesthetic_conditioning import blend

    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    torch.testing.assert_close(slerp(a, b, 0.5), torch.tensor([[0.5**0.5, 0.5**0.5]]))  # unit length kept
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel: the linear blend, no NaN
    torch.testing.assert_close(blend(a, b, AestheticSettings(weight=0.25)), torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(blend(a, b, AestheticSettings(weight=0.5, slerp=True)), slerp(a, b, 0.5))


def test_an_old_extension_file_steers_sd1(sd1, tmp_path) -> None:
    path = tmp_path / "old.pt"
    torch.save(torch.randn(1, 32) * 5, path)  # as the old extension saved it: the raw mean, [1, D]
    conditioner = make_conditioner(sd1, load_aesthetic(path), tmp_path)
    plain = PromptEncoder(sd1).encode([PROMPT])
    assert not torch.allclose(conditioner.apply([PROMPT], plain, ON).context, plain.context)


def test_an_embedding_of_another_clip_width_is_refused_naming_both(sd1, tmp_path) -> None:
    wide = AestheticEmbedding({"": torch.randn(1, 768)}, name="vit_l_look")
    with pytest.raises(FormatError, match=r"'vit_l_look' is for a CLIP 768 wide .*model's CLIP is 32 wide"):
        make_conditioner(sd1, wide, tmp_path)
    xl = tiny_bundle("sdxl")
    with pytest.raises(
        FormatError, match=r"holds one feature 64 wide; this sdxl model's CLIP needs clip_l 64"
    ):
        make_conditioner(xl, AestheticEmbedding({"": torch.randn(1, 64)}, name="x"), tmp_path)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": 51}, r"steps = 51 is out of range \[0, 50\]"),
        ({"steps": -1}, r"steps = -1 is out of range"),
        ({"learn_rate": 0.5}, r"learn_rate = 0.5 is out of range \[0.0, 0.01\]"),
        ({"learn_rate": 0.0}, "expected more than 0 when steps > 0"),
        ({"weight": 1.5}, r"weight = 1.5 is out of range"),
        ({"slerp_angle": -0.1}, "slerp_angle"),
    ],
)
def test_settings_out_of_range_are_refused(settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        AestheticSettings(**settings)


def test_infotext_fields_use_the_old_extensions_labels() -> None:
    fields = infotext_fields("look", ON)
    assert fields["Aesthetic embedding"] == "look" and fields["Aesthetic steps"] == 3
    assert fields["Aesthetic LR"] == 0.005 and "Aesthetic text" not in fields
    assert infotext_fields("look", ON.replace(text="sky"))["Aesthetic text negative"] is False
    assert infotext_fields("look", ON.replace(weight=0.0)) == {}
