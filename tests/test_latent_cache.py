from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_helpers import tiny_vae

from liandan.data import latent_cache
from liandan.data.buckets import fit
from liandan.errors import DatasetError


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encode_returns_the_vae_distribution(vae) -> None:
    mean, std = latent_cache.encode(vae, _pixels(), Path("x.png"))
    dist = vae.encode(_pixels().unsqueeze(0)).latent_dist
    assert mean.shape == std.shape == (4, 8, 8)
    assert torch.allclose(mean, dist.mean[0]) and torch.allclose(std, dist.std[0])
    assert std.gt(0).all()


def test_sampling_rules() -> None:
    entry = {"mean": torch.randn(4, 2, 2), "std": torch.rand(4, 2, 2) + 0.1}

    def draw(mode: str, seed: int) -> torch.Tensor:
        return latent_cache.sample(entry, mode, torch.Generator().manual_seed(seed), scaling=0.5, shift=0.1)

    assert torch.equal(draw("deterministic", 0), (entry["mean"] - 0.1) * 0.5)
    assert torch.equal(draw("deterministic", 0), draw("deterministic", 1))
    assert torch.equal(draw("random", 3), draw("random", 3))
    assert not torch.equal(draw("random", 3), draw("random", 4))
    noise = torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(draw("once", 7), (entry["mean"] + entry["std"] * noise - 0.1) * 0.5)


def test_cache_key_separates_everything_that_changes_the_latent() -> None:
    g = fit((100, 50), (64, 64), "crop")
    base = latent_cache.cache_key("abc", "model", g, False)
    assert base == latent_cache.cache_key("abc", "model", g, False)
    others = {
        latent_cache.cache_key("abd", "model", g, False),
        latent_cache.cache_key("abc", "other", g, False),
        latent_cache.cache_key("abc", "model", fit((100, 50), (64, 64), "stretch"), False),
        latent_cache.cache_key("abc", "model", g, True),
    }
    assert base not in others and len(others) == 4


def test_disk_cache_round_trip_is_atomic_and_survives_corruption(tmp_path: Path) -> None:
    cache = latent_cache.DiskCache(tmp_path / "cache")
    entry = {"mean": torch.randn(4, 3, 5), "std": torch.rand(4, 3, 5), "alpha_weight": torch.ones(1, 3, 5)}
    assert "k" not in cache and cache.get("k") is None
    cache.put("k", entry, {"source": "a.png"})
    assert "k" in cache
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["k.safetensors"]  # no temp file left
    loaded = cache.get("k")
    assert loaded is not None and all(torch.equal(loaded[name], entry[name]) for name in entry)
    cache.path("k").write_bytes(b"not safetensors at all")
    assert cache.get("k") is None  # encoded again by the dataset, then overwritten


def test_fingerprint_follows_the_weights(vae) -> None:
    other = tiny_vae()
    assert latent_cache.vae_fingerprint(vae) == latent_cache.vae_fingerprint(other)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert latent_cache.vae_fingerprint(vae) != latent_cache.vae_fingerprint(other)


def test_non_finite_latents_are_a_clear_error() -> None:
    broken = tiny_vae()
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(DatasetError, match=r"non-finite latents for bad\.png"):
        latent_cache.encode(broken, _pixels(), Path("bad.png"))
