import pytest
import torch
from open_clip_config import open_clip_config

from liandan.models.tiny import tiny_bundle, tiny_spec


def _context(bundle, prompt="a photo of a cat"):
    states, pooled = [], None
    for tokenizer, encoder in zip(bundle.tokenizers, bundle.text_encoders):
        ids = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2] if bundle.family != "sd1" else out.last_hidden_state)
        pooled = getattr(out, "text_embeds", None)
    return torch.cat(states, dim=-1), pooled


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_bundle_runs_end_to_end_and_is_not_degenerate(family):
    bundle = tiny_bundle(family)
    context, pooled = _context(bundle)
    assert context.shape[-1] == bundle.unet.config.cross_attention_dim
    added = {}
    if bundle.is_sdxl:
        added = {
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
        }
    latents = bundle.vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)
    with torch.no_grad():
        noise_pred = bundle.unet(latents, torch.tensor([500]), context, **added).sample
    other_context, _ = _context(bundle, "a red house")
    with torch.no_grad():
        other_pred = bundle.unet(latents, torch.tensor([500]), other_context, **added).sample
    assert noise_pred.shape == latents.shape
    assert noise_pred.std() > 0.05
    assert (noise_pred - other_pred).abs().max() > 1e-4  # the prompt reaches the UNet


def test_tiny_bundle_is_deterministic_per_seed():
    a, b, c = tiny_bundle("sd1", seed=0), tiny_bundle("sd1", seed=0), tiny_bundle("sd1", seed=1)
    weights = "down_blocks.0.attentions.0.proj_out.weight"
    assert torch.equal(a.unet.state_dict()[weights], b.unet.state_dict()[weights])
    assert not torch.equal(a.unet.state_dict()[weights], c.unet.state_dict()[weights])


def test_tiny_families_have_the_documented_shapes():
    sd1, sd2, sdxl = tiny_bundle("sd1"), tiny_bundle("sd2"), tiny_bundle("sdxl")
    assert sd1.embedding_widths == [32]
    assert list(sd1.unet.config.block_out_channels) == [32, 64, 128, 128]
    assert sum(p.numel() for p in sd1.unet.parameters()) == 8_525_412  # = the fixture's model.diffusion_model
    assert (sd2.family, sd2.prediction_type, sd2.tokenizers[0].pad_token) == ("sd2", "v_prediction", "!")
    assert sdxl.embedding_widths == [64, 128]
    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert all(m.vae_scale_factor == 8 for m in (sd1, sd2, sdxl))


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="sd3"):
        tiny_bundle("sd3")


@pytest.mark.webui_env
@pytest.mark.parametrize(("family", "index"), [("sd2", 0), ("sdxl", 1)])
def test_tiny_open_clip_towers_fit_the_model_open_clip_builds(family, index):
    """The WebUI builds an OpenCLIP tower with open_clip (2.20: MLP 4x the width) and loads our weights in."""
    import open_clip

    from liandan.models.ldm_layout import TEXT_PREFIXES
    from liandan.models.saving import ldm_state_dict

    tower = tiny_spec(family).text_encoders[index]
    model = open_clip.CLIP(**open_clip_config(tower.config))
    del model.visual
    prefix = TEXT_PREFIXES[(family, index)]
    ours = {
        k[len(prefix) :]: v for k, v in ldm_state_dict(tiny_bundle(family)).items() if k.startswith(prefix)
    }
    # a shape open_clip builds otherwise raises even so; the WebUI loads non-strictly as here. Not ours: the
    # contrastive temperature, and SD2's projection (it conditions on the penultimate layer alone)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    not_ours = ["logit_scale"] if tower.with_projection else ["text_projection", "logit_scale"]
    assert (missing, unexpected) == (not_ours, [])


def test_write_tiny_models_is_deterministic_idempotent_and_loadable(tmp_path):
    from liandan.models.loading import load_bundle
    from liandan.models.tiny import write_tiny_models

    checkpoints = tmp_path / "webui" / "models" / "Stable-diffusion"
    paths = write_tiny_models(checkpoints)
    assert sorted(p.name for p in paths.values()) == [
        "liandan-tiny-sd1.safetensors",
        "liandan-tiny-sdxl.safetensors",
    ]
    clip = tmp_path / "webui" / "models" / "liandan-tiny-clip"
    assert (clip / "config.json").is_file() and (clip / "vocab.json").is_file()
    assert "version: models/liandan-tiny-clip" in paths["sd1"].with_suffix(".yaml").read_text()
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths.values()}
    assert write_tiny_models(checkpoints) == paths
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths.values()} == stamps

    other = write_tiny_models(tmp_path / "elsewhere")  # the same bytes in another folder: the same A1111 hash
    assert other["sd1"].read_bytes() == paths["sd1"].read_bytes()
    assert other["sdxl"].read_bytes() == paths["sdxl"].read_bytes()
    paths["sdxl"].write_bytes(b"broken")
    write_tiny_models(checkpoints)  # a damaged file is rewritten
    assert _tensors(paths["sdxl"]) == _tensors(other["sdxl"])
    from safetensors.torch import save_file

    # so is one an older liandan wrote (revision 1: a 2x OpenCLIP-G MLP the WebUI cannot build)
    save_file({"x": torch.zeros(1)}, str(paths["sdxl"]), metadata={"liandan_tiny": "sdxl"})
    write_tiny_models(checkpoints)
    assert _tensors(paths["sdxl"]) == _tensors(other["sdxl"])

    sd1 = load_bundle(paths["sd1"])
    assert sd1.info["clip_config"] == "models/liandan-tiny-clip"
    assert torch.equal(sd1.unet.conv_in.weight, tiny_bundle("sd1").unet.conv_in.weight)
    assert load_bundle(paths["sdxl"]).embedding_widths == [64, 128]


def _tensors(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        # safetensors may order header keys differently run to run: compare contents
        return {key: f.get_tensor(key).numpy().tobytes() for key in f.keys()}  # noqa: SIM118
