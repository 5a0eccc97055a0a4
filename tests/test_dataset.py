from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import counted_vae, gradient_image, save, tiny_vae

from liandan.data.dataset import DatasetMix, TrainingDataset, preview_captions
from liandan.data.image_folder import open_image
from liandan.data.pixels import to_pixel_tensor
from liandan.errors import ConfigError, DatasetError
from liandan.jobs import DataSpec

BATCH_KEYS = {"latents", "prompts", "captions", "loss_weight", "paths", "flipped"}
BATCH_KEYS |= {"original_size", "crop_top_left", "target_size", "loss_scale"}


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


def _dataset(folder: Path, vae, *, batch_size: int = 2, seed: int = 0, **kwargs) -> TrainingDataset:
    options = {k: kwargs.pop(k) for k in ("cache_dir", "model_id", "templates_dir") if k in kwargs}
    spec = DataSpec(folder=folder, width=kwargs.pop("width", 64), height=kwargs.pop("height", 64), **kwargs)
    return TrainingDataset(spec, name="goldti", vae=vae, batch_size=batch_size, seed=seed, **options)


def _scaled_mean(vae, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.encode(pixels.unsqueeze(0)).latent_dist.mean[0] * vae.config.scaling_factor


def test_fixture_batch_contract(train64: Path, vae) -> None:
    ds = _dataset(train64, vae, template="liandan_style_filewords.txt")
    assert ds.cache_latents() == 4 and not ds.needs_vae
    assert len(ds) == 4
    plan = ds.batch_plan(0)
    assert len(plan) == 2 and sorted(i for b in plan for i in b) == [0, 1, 2, 3]
    batch = ds.collate([ds[i] for i in plan[0]])
    assert set(batch) == BATCH_KEYS
    assert batch["latents"].shape == (2, 4, 32, 32) and batch["latents"].dtype == torch.float32
    assert batch["loss_weight"] is None
    for key in ("original_size", "crop_top_left", "target_size"):
        assert batch[key].shape == (2, 2) and batch[key].dtype == torch.long
    assert batch["original_size"].tolist() == [[64, 64]] * 2 and batch["crop_top_left"].eq(0).all()
    for prompt, caption in zip(batch["prompts"], batch["captions"]):
        assert caption in prompt and "goldti" in prompt and "[" not in prompt
    assert {Path(p).name for p in batch["paths"]} <= {"img0.png", "img1.png", "img2.png", "img3.png"}


def test_latent_sampling_once_deterministic_random(train64: Path, vae) -> None:
    mean = _scaled_mean(vae, to_pixel_tensor(open_image(train64 / "img1.png")))
    once = _dataset(train64, vae, latent_sampling="once")
    assert torch.equal(once.item(1, 0)["latents"], once.item(1, 7)["latents"])
    assert not torch.allclose(once.item(1, 0)["latents"], mean)  # a sample, not the mean
    det = _dataset(train64, vae, latent_sampling="deterministic")
    assert torch.allclose(det.item(1, 3)["latents"], mean, atol=1e-6)
    rand = _dataset(train64, vae, latent_sampling="random", seed=5)
    first = rand.item(1, 0)["latents"]
    assert not torch.equal(first, rand.item(1, 1)["latents"])
    again = _dataset(train64, vae, latent_sampling="random", seed=5)
    assert torch.equal(first, again.item(1, 0)["latents"])  # same (seed, epoch, index): same sample
    other_seed = _dataset(train64, vae, latent_sampling="random", seed=6)
    assert not torch.equal(first, other_seed.item(1, 0)["latents"])


def test_disk_cache_hit_does_not_call_the_vae(train64: Path, tmp_path: Path) -> None:
    cache = tmp_path / "latents"
    vae, calls = counted_vae()
    first = _dataset(train64, vae, latent_cache="disk", cache_dir=cache, flip=0.5)
    assert first.needs_vae
    assert first.cache_latents() == 8 and len(calls) == 8  # each image and its mirror, once
    assert len(list(cache.glob("*.safetensors"))) == 8 and not first.needs_vae
    calls.clear()
    second = _dataset(train64, vae, latent_cache="disk", cache_dir=cache, flip=0.5)
    assert not second.needs_vae and second.cache_latents() == 0
    for index in range(4):
        for epoch in range(3):
            assert torch.equal(second.item(index, epoch)["latents"], first.item(index, epoch)["latents"])
    assert calls == []
    other_model = _dataset(train64, vae, latent_cache="disk", cache_dir=cache, model_id="abc", flip=0.5)
    assert other_model.needs_vae and other_model.cache_latents() == 8


def test_cache_off_encodes_on_the_fly(train64: Path) -> None:
    vae, calls = counted_vae()
    ds = _dataset(train64, vae, latent_cache="off", latent_sampling="deterministic")
    assert ds.cache_latents() == 0 and ds.needs_vae and calls == []
    ds[0], ds[0]
    assert calls == [1, 1]


def test_flip_really_flips_and_caches_the_mirrored_image(tmp_path: Path, vae) -> None:
    image = gradient_image((64, 64))
    save(image, tmp_path / "d" / "a.png")
    ds = _dataset(tmp_path / "d", vae, flip=1.0, latent_sampling="deterministic")
    item = ds[0]
    assert item["flipped"]
    mirrored = to_pixel_tensor(image).flip(-1)
    assert torch.allclose(item["latents"], _scaled_mean(vae, mirrored), atol=1e-6)
    plain = _scaled_mean(vae, to_pixel_tensor(image))
    assert not torch.allclose(item["latents"], plain.flip(-1), atol=1e-3)  # flipping latents is not the same


def test_flip_decisions_are_seeded_per_epoch(train64: Path, vae) -> None:
    ds = _dataset(train64, vae, flip=0.5, seed=3, latent_cache="off")
    decisions = [[ds.is_flipped(i, e) for i in range(4)] for e in range(8)]
    assert any(any(row) for row in decisions) and not all(all(row) for row in decisions)
    assert len({tuple(row) for row in decisions}) > 1
    again = _dataset(train64, vae, flip=0.5, seed=3, latent_cache="off")
    assert decisions == [[again.is_flipped(i, e) for i in range(4)] for e in range(8)]


def test_buckets_group_by_aspect_and_record_sdxl_geometry(tmp_path: Path, vae) -> None:
    folder = tmp_path / "b"
    for i in range(2):
        save(gradient_image((300, 180), seed=i), folder / f"wide{i}.png")
        save(gradient_image((180, 300), seed=i), folder / f"tall{i}.png")
        save(gradient_image((100, 100), seed=i), folder / f"square{i}.png")
    ds = _dataset(folder, vae, width=256, height=256, buckets=True, latent_sampling="deterministic")
    sizes = {Path(img.record.path).stem: img.geometry.target_size for img in ds.images}
    assert sizes["wide0"] == (320, 192) and sizes["tall0"] == (192, 320) and sizes["square0"] == (256, 256)
    for epoch in range(3):
        for indices in ds.batch_plan(epoch):
            batch = ds.collate([ds.item(i, epoch) for i in indices])
            assert len({Path(p).stem.rstrip("01") for p in batch["paths"]}) == 1  # one aspect per batch
            h, w = batch["target_size"][0].tolist()
            assert batch["latents"].shape == (2, 4, h // 2, w // 2)
    wide = ds.item(next(i for i, img in enumerate(ds.images) if img.record.path.stem == "wide0"), 0)
    assert wide["original_size"] == (180, 300) and wide["target_size"] == (192, 320)
    assert wide["crop_top_left"] == (0, 0)  # 300x180 scaled to 320x192 covers exactly
    assert "320x192: 2 image(s)" in ds.report()


def test_alpha_weight_at_latent_resolution(tmp_path: Path, vae) -> None:
    folder = tmp_path / "a"
    save(gradient_image((64, 64), "RGBA"), folder / "alpha.png")
    save(gradient_image((64, 64)), folder / "plain.png")
    ds = _dataset(folder, vae, use_alpha_weight=True, batch_size=2)
    ds.cache_latents()
    batch = ds.collate([ds[0], ds[1]])
    weight = batch["loss_weight"]
    assert weight.shape == (2, 1, 32, 32)
    alpha_row = batch["paths"].index(str(folder / "alpha.png"))
    assert weight[alpha_row, :, :, :16].eq(0).all() and weight[alpha_row, :, :, 16:].eq(2).all()
    assert weight[1 - alpha_row].eq(1).all()
    flipped = _dataset(folder, vae, use_alpha_weight=True, flip=1.0)
    assert torch.equal(flipped[0]["loss_weight"], weight[alpha_row].flip(-1))
    assert _dataset(folder, vae)[0]["loss_weight"] is None


def test_captions_from_names_and_txt_and_templates(tmp_path: Path, vae) -> None:
    folder = tmp_path / "c"
    save(gradient_image((64, 64)), folder / "00012-red fox_jumping.png")
    save(gradient_image((64, 64)), folder / "other.png")
    (folder / "other.txt").write_text("from text, file\n")
    save(gradient_image((64, 64)), folder / "badcap.png")
    (folder / "badcap.txt").write_bytes(b"\xff\xfe")
    ds = _dataset(folder, vae, template="liandan_none.txt", filename_regex=r"[a-z]+", join_string="+")
    assert sorted(img.caption for img in ds.images) == ["from text, file", "red+fox+jumping"]
    assert "badcap.txt is not UTF-8" in ds.report()
    user = tmp_path / "templates"
    user.mkdir()
    (user / "mine.txt").write_text("[name] does [filewords]\n")
    ds = _dataset(folder, vae, template="mine.txt", templates_dir=user)
    assert sorted(preview_captions(ds, 5)) == ["goldti does from text, file", "goldti does red fox_jumping"]


def test_shuffle_and_dropout_reproducible_per_seed_and_epoch(tmp_path: Path, vae) -> None:
    folder = tmp_path / "t"
    save(gradient_image((64, 64)), folder / "a.png")
    (folder / "a.txt").write_text(",".join(f"tag{i}" for i in range(12)))
    template = tmp_path / "plain.txt"
    template.write_text("[filewords]\n")
    options = {"template": str(template), "shuffle_tags": True, "tag_dropout": 0.3, "repeats": 3, "seed": 9}
    ds = _dataset(folder, vae, **options)
    assert len(ds) == 3
    epoch0, epoch1 = preview_captions(ds, 3, epoch=0), preview_captions(ds, 3, epoch=1)
    assert epoch0 == preview_captions(_dataset(folder, vae, **options), 3, epoch=0)
    assert epoch0 != epoch1 and len(set(epoch0)) == 3  # each repeat gets its own draw
    assert epoch0 != preview_captions(_dataset(folder, vae, **{**options, "seed": 10}), 3, epoch=0)
    ds.set_epoch(1)
    assert ds[2]["prompt"] == epoch1[2]


def test_repeats_and_batch_size_clamp(train64: Path, vae) -> None:
    ds = _dataset(train64, vae, repeats=3, batch_size=5, latent_cache="off")
    assert len(ds) == 12 and ds.batch_size == 5
    plan = ds.batch_plan(0)
    assert len(plan) == 2 and plan == ds.batch_plan(0) and plan != ds.batch_plan(1)
    assert _dataset(train64, vae, batch_size=64, latent_cache="off").batch_size == 4  # A1111: min(bs, len)


def test_stretch_mode_matches_a1111(tmp_path: Path, vae) -> None:
    save(gradient_image((128, 64)), tmp_path / "s" / "wide.png")
    crop = _dataset(tmp_path / "s", vae, latent_cache="off")[0]
    stretch = _dataset(tmp_path / "s", vae, latent_cache="off", resize_mode="stretch")[0]
    assert crop["crop_top_left"] == (0, 32) and stretch["crop_top_left"] == (0, 0)
    assert stretch["original_size"] == crop["original_size"] == (64, 128)


def test_bad_settings_are_clear_errors(train64: Path, vae) -> None:
    with pytest.raises(ConfigError, match="multiple of 2"):
        _dataset(train64, vae, width=65)
    with pytest.raises(ConfigError, match="needs a cache folder"):
        _dataset(train64, vae, latent_cache="disk")
    with pytest.raises(DatasetError, match="no dataset folder"):
        TrainingDataset(DataSpec(), name="x", vae=vae)
    with pytest.raises(DatasetError, match="not found"):
        _dataset(train64, vae, template="missing.txt")


def test_source_images_are_untouched(train64: Path, vae, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in train64.iterdir()}
    ds = _dataset(train64, vae, latent_cache="disk", cache_dir=tmp_path / "cache", flip=0.5)
    ds.cache_latents()
    assert {p.name: p.read_bytes() for p in train64.iterdir()} == before
    assert np.asarray(open_image(train64 / "img0.png")).shape == (64, 64, 3)


def test_several_datasets_train_together_each_with_its_own_settings(tmp_path: Path) -> None:
    """DreamBooth's instance and class images: own captions, template, repeats, weight and cache."""
    for i in range(2):
        save(gradient_image((64, 64), seed=i), tmp_path / "instance" / f"me{i}.png")
    for i in range(3):
        save(gradient_image((64, 64), seed=10 + i), tmp_path / "class" / f"a dog {i}.png")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "instance.txt").write_text("a photo of [name]\n")
    (tmp_path / "t" / "class.txt").write_text("a photo of [filewords]\n")
    vae, calls = counted_vae()
    instance = _dataset(tmp_path / "instance", vae, template="instance.txt", templates_dir=tmp_path / "t",
                        repeats=3, latent_cache="disk", cache_dir=tmp_path / "cache")  # fmt: skip
    classes = _dataset(
        tmp_path / "class", vae, template="class.txt", templates_dir=tmp_path / "t", weight=0.5
    )
    mix = DatasetMix([instance, classes], seed=0)
    assert len(mix) == 6 + 3 and len(mix.images) == 5
    assert mix.cache_latents() == 5 and not mix.needs_vae and calls == [1] * 5
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # only the instance set asked for disk

    plan = mix.batch_plan(0)
    assert sorted(i for batch in plan for i in batch) == sorted(
        [i for b in instance.batch_plan(0) for i in b] + [6 + i for b in classes.batch_plan(0) for i in b]
    )
    assert plan == mix.batch_plan(0) and plan != mix.batch_plan(1)
    for batch in plan:
        parts = {index >= 6 for index in batch}
        assert len(parts) == 1  # a batch never mixes datasets
        collated = mix.collate([mix[i] for i in batch])
        if parts == {True}:
            assert collated["loss_scale"] == 0.5 and collated["prompts"][0].startswith("a photo of a dog")
        else:
            assert collated["loss_scale"] == 1.0 and collated["prompts"] == ["a photo of goldti"] * len(batch)
    assert mix.prompt(7, 0) == classes.prompt(1, 0)
    with pytest.raises(IndexError):
        mix[9]
