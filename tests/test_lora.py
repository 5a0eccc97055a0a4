"""LoRA and LyCORIS on the tiny models: the loss falls for each network type; every saved key lands on a
layer the WebUI's loader finds (tiny models and full-size SD1.5/SDXL names); the file read back and applied
the WebUI's way reproduces the trained network; `<lora:x:1>` changes a fixed-seed image and `<lora:x:0>`
leaves it bit-identical; the injection is removed exactly; diffusers' `load_lora_weights` reads SD1 and SDXL
outputs; resume; bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from liandan.errors import ConfigError, FormatError
from liandan.formats.lora import LoraFile, apply_lora, lora_applied, read_lora, write_lora
from liandan.formats.lora_keys import bundle_modules, module_names, unapplied_keys, webui_layers
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import run_job
from liandan.jobs import DataSpec, LoraJob, NetworkSpec, PreviewSpec, TrainSpec
from liandan.models.ldm_layout import hf_text_model_prefix
from liandan.models.lora_injection import LoraNetwork
from liandan.models.model_spec import build_modules, spec_of_bundle, standard_spec
from liandan.models.sampling import generate
from liandan.models.tiny import tiny_bundle
from liandan.progress import Control, Reporter

NETWORK_TYPES = ["lora", "locon", "loha", "lokr", "dora"]


def make_job(folder: Path, name: str = "lorax", **changes) -> LoraJob:
    train = {"learn_rate": "0.01", "lr_scheduler": "constant", "max_steps": 6, "save_every": 0,
             "preview_every": 0, "seed": 0}  # fmt: skip
    train.update(changes.pop("train", {}))
    preview = {"steps": 2, "width": 64, "height": 64, "seed": 1, "self_test": False}
    preview.update(changes.pop("preview", {}))
    network = NetworkSpec(**{"rank": 4, "alpha": 4.0, **changes.pop("network", {})})
    data = DataSpec(folder=folder, width=64, height=64, template="liandan_style_filewords.txt")
    return LoraJob(name=name, network=network, train=TrainSpec(**train), data=data,
                   preview=PreviewSpec(**preview), **changes)  # fmt: skip


def run(job: LoraJob, host: StandaloneHost, control: Control | None = None):
    events = []
    return run_job(job, host, Reporter(events.append), control or Control()), events


def losses(host: StandaloneHost, name: str = "lorax") -> list[float]:
    (path,) = host.folders.logs.glob(f"*/{name}/lora_loss.csv")
    with open(path, newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.fixture
def train64(fixtures_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "train64"
    shutil.copytree(fixtures_dir / "train64", dest)
    return dest


@pytest.fixture
def host(tmp_path: Path) -> StandaloneHost:
    return StandaloneHost(tmp_path / "data")


def _randomised(network: LoraNetwork) -> LoraNetwork:
    """A network whose delta is not zero (a fresh LoRA's up matrix is)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in network.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return network


def _unet_output(bundle) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, bundle.unet.config.cross_attention_dim, generator=generator)
    kwargs = {}
    if bundle.is_sdxl:
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 128, generator=generator),
                                       "time_ids": torch.randn(1, 6, generator=generator)}  # fmt: skip
    with torch.no_grad():
        return bundle.unet(sample, 10, context, **kwargs).sample


def _text_output(bundle) -> list[torch.Tensor]:
    ids = torch.arange(77).unsqueeze(0)
    with torch.no_grad():
        return [encoder(ids)[0] for encoder in bundle.text_encoders]


# --- networks and the file, without training --------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("network_type", NETWORK_TYPES)
def test_the_file_applied_the_webui_way_equals_the_trained_network_and_close_restores(family, network_type):
    bundle = tiny_bundle(family)
    spec = NetworkSpec(type=network_type, rank=4, alpha=2.0, conv_rank=2, targets="transformer")
    before = {k: v.clone() for k, v in bundle.unet.state_dict().items()}
    base, base_text = _unet_output(bundle), _text_output(bundle)
    network = _randomised(LoraNetwork(bundle, spec, text_encoders=True))
    network.apply()
    live, live_text = _unet_output(bundle), _text_output(bundle)
    network.remove()
    assert torch.equal(_unet_output(bundle), base)  # removed exactly
    assert not any("forward" in m.__dict__ for m in bundle.unet.modules())
    assert all(torch.equal(v, before[k]) for k, v in bundle.unet.state_dict().items())
    assert not torch.allclose(live, base, atol=1e-3)

    lora = LoraFile(network.file_state())
    assert not unapplied_keys(
        list(lora.modules()), webui_layers(spec_of_bundle(bundle), bundle_modules(bundle))
    )
    with lora_applied(bundle, lora, 1.0) as applied:
        assert not applied.skipped and len(applied.changed) == len(lora.modules())
        torch.testing.assert_close(_unet_output(bundle), live, atol=1e-5, rtol=1e-4)
        for merged, trained in zip(_text_output(bundle), live_text):
            torch.testing.assert_close(merged, trained, atol=1e-5, rtol=1e-4)
    assert torch.equal(_unet_output(bundle), base)
    with lora_applied(bundle, lora, 0.0):
        assert torch.equal(_unet_output(bundle), base)  # <lora:x:0> is bit-identical to none
        assert all(torch.equal(a, b) for a, b in zip(_text_output(bundle), base_text))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_every_key_of_a_full_size_network_lands_on_a_webui_layer(family) -> None:
    """SD1.5 and SDXL names (the layout is built on the meta device): kohya's prefixes, every key found."""
    spec = standard_spec(family)
    text_encoders, unet, vae = build_modules(spec, empty=True)
    modules = {"unet": unet, "vae": vae, **{f"text_encoder_{i}": te for i, te in enumerate(text_encoders)}}
    names = module_names(spec, modules)
    layers = webui_layers(spec, modules)
    leaves = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")
    attention = [key for (_, path), key in names.items() if path.endswith(leaves)]
    assert len(attention) > 50 and not unapplied_keys(attention, layers)
    if family == "sd1":
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in attention
        assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in attention
    else:
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in attention
        assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj" in attention
    # what the WebUI cannot map is never targeted, and a mismatched key is caught
    assert unapplied_keys(["lora_unet_down_blocks_9_attentions_0_proj_in"], layers)


def test_an_incomplete_openclip_attention_is_unapplied() -> None:
    """The WebUI changes OpenCLIP's packed q/k/v only with all of q, k, v and out_proj."""
    bundle = tiny_bundle("sd2")
    layers = webui_layers(spec_of_bundle(bundle), bundle_modules(bundle))
    keys = [f"lora_te_text_model_encoder_layers_0_self_attn_{p}_proj" for p in ("q", "k", "v", "out")]
    assert not unapplied_keys(keys, layers)
    assert unapplied_keys(keys[:3], layers) == sorted(keys[:3])


# --- training -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("network_type", NETWORK_TYPES)
def test_the_loss_falls_and_every_saved_key_is_used(train64, host, network_type) -> None:
    job = make_job(train64, network={"type": network_type}, train={"max_steps": 12, "batch_size": 2})
    result, _ = run(job, host)
    assert result.step == 12
    values = losses(host)
    assert sum(values[-4:]) / 4 < sum(values[:4]) / 4
    lora = read_lora(host.folders.lora / "lorax.safetensors")
    assert lora.network_type() == ("lora" if network_type == "locon" else network_type)
    bundle = tiny_bundle("sd1")
    assert not unapplied_keys(
        list(lora.modules()), webui_layers(spec_of_bundle(bundle), bundle_modules(bundle))
    )


@pytest.mark.slow
def test_a_trained_lora_changes_the_image_at_1_and_not_at_0_with_metadata(train64, host) -> None:
    refreshed: list[str] = []
    host.refresh = refreshed.append  # the WebUI host refreshes its Lora list here
    job = make_job(train64, text_encoder_lr_scale=0.5, train={"save_every": 3}, preview={"self_test": True})
    _, events = run(job, host)
    assert refreshed == ["lora"]
    path = host.folders.lora / "lorax.safetensors"
    lora = read_lora(path)
    assert any(k.startswith("lora_te_") for k in lora.tensors) and any(
        k.startswith("lora_unet_") for k in lora.tensors
    )
    assert all(t.dtype == torch.float16 for t in lora.tensors.values())
    meta = lora.metadata
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_steps"]) == ("4", "4.0", "6")
    assert json.loads(meta["ss_network_args"])["algo"] == "lora"
    assert "1_train64" in json.loads(meta["ss_tag_frequency"]) and meta["modelspec.title"] == "lorax"
    assert json.loads(meta["ss_dataset_dirs"])["1_train64"]["img_count"] > 0
    run_dir = next(host.folders.logs.glob("*/lorax"))
    assert (run_dir / "Lora" / "lorax-3.safetensors").is_file()
    assert not any("identical" in (e.message or "") for e in events)

    with host.model_for_training(None) as bundle:

        def image():
            return generate(bundle, "a photo", "", steps=2, cfg_scale=7, seed=5, width=64, height=64,
                            sampler="euler", clip_skip=1)  # fmt: skip

        plain = image()
        with lora_applied(bundle, lora, 1.0):
            changed = image()
        with lora_applied(bundle, lora, 0.0):
            zero = image()
    assert plain.tobytes() != changed.tobytes()
    assert plain.tobytes() == zero.tobytes()


@pytest.mark.slow
def test_sdxl_trains_both_text_encoders_and_sd2_trains(train64, host) -> None:
    host.current_checkpoint()  # writes the tiny models
    job = make_job(train64, model="liandan-tiny-sdxl", text_encoder_lr_scale=1.0, train={"max_steps": 2})
    run(job, host)
    lora = read_lora(host.folders.lora / "lorax.safetensors")
    prefixes = {key.split("_text_model")[0] for key in lora.tensors if key.startswith("lora_te")}
    assert prefixes == {"lora_te1", "lora_te2"} and lora.family == "sdxl"
    assert any(key.startswith("lora_unet_input_blocks_") for key in lora.tensors)  # kohya's SDXL names
    from liandan.models.saving import save_checkpoint

    checkpoint = save_checkpoint(tiny_bundle("sd2"), host.folders.checkpoints / "two.safetensors")
    sd2 = make_job(
        train64, name="two", model=str(checkpoint), network={"type": "loha"}, train={"max_steps": 2}
    )
    run(sd2, host)
    assert read_lora(host.folders.lora / "two.safetensors").family == "sd2"


@pytest.mark.slow
def test_resume_is_bit_exact(train64, tmp_path) -> None:
    """Interrupted at step 3 and resumed (text encoders trained too), the file is the same to the bit as one
    straight run's, and so is every logged loss."""
    job = make_job(train64, text_encoder_lr_scale=0.5, network={"type": "loha", "rank_dropout": 0.1})
    straight = StandaloneHost(tmp_path / "straight")
    run(job, straight)
    resumed, control = StandaloneHost(tmp_path / "resumed"), Control()
    events = []

    def stop_at_three(event) -> None:
        events.append(event)
        if event.kind == "step" and event.step == 3:
            control.interrupt()

    first = run_job(job, resumed, Reporter(stop_at_three), control)
    assert first.stopped_reason == "interrupted" and first.step == 3
    second, _ = run(job, resumed)
    assert (second.start_step, second.step) == (3, 6)
    ours, theirs = (read_lora(h.folders.lora / "lorax.safetensors").tensors for h in (resumed, straight))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert losses(straight) == losses(resumed)


# --- diffusers reads our files ----------------------------------------------------------------------------


_OLD_DIFFUSERS_NAMES = [  # diffusers 0.31's converted kohya keys -> module paths
    (re.compile(r"\.(down|up)\.weight$"), ""),
    (re.compile(r"\.lora(_linear_layer)?$"), ""),
    (re.compile(r"\.processor\.to_out_lora$"), ".to_out.0"),
    (re.compile(r"\.processor\.(to_[qkv])_lora$"), r".\1"),
    (re.compile(r"self_attn\.to_out_lora$"), "self_attn.out_proj"),
    (re.compile(r"self_attn\.to_([qkv])_lora$"), r"self_attn.\1_proj"),
]


def _diffusers_module(key: str) -> tuple[str, str]:
    component, _, path = key.partition(".")
    for pattern, replacement in _OLD_DIFFUSERS_NAMES:
        path = pattern.sub(replacement, path)
    return component, path


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_reads_every_key_of_our_files(tmp_path, family) -> None:
    """diffusers' own kohya conversion (`lora_state_dict`, what `load_lora_weights` reads with) turns every
    key into a module of its pipeline, and with its PEFT backend (transformers >= 4.34, so not beside the
    WebUI's 4.30.2) `load_lora_weights` loads them and changes the output."""
    from diffusers.utils import USE_PEFT_BACKEND

    bundle = tiny_bundle(family)
    network = _randomised(LoraNetwork(bundle, NetworkSpec(type="locon", rank=4), text_encoders=True))
    path = write_lora(tmp_path / "x.safetensors", LoraFile(network.file_state()), "fp32")
    pipe = _pipeline(bundle)
    state, alphas = pipe.lora_state_dict(str(tmp_path), weight_name=path.name, unet_config=bundle.unet.config)
    components = {"unet": bundle.unet, "text_encoder": bundle.text_encoders[0]}
    if bundle.is_sdxl:
        components["text_encoder_2"] = bundle.text_encoders[1]
    # transformers 5's CLIPTextModel has no `text_model` level; diffusers' keys keep transformers 4's names
    modules = {
        (name, (hf_text_model_prefix(module) if name != "unet" else "") + path)
        for name, module in components.items()
        for path, _ in module.named_modules()
    }
    found = {_diffusers_module(key) for key in state}
    assert found <= modules
    assert len(found) == len(network.networks) == len(alphas)
    if not USE_PEFT_BACKEND:
        return
    base = _unet_output(bundle)
    pipe.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="x")
    assert not torch.allclose(_unet_output(bundle), base, atol=1e-4)


def _pipeline(bundle):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if bundle.is_sdxl:
        return StableDiffusionXLPipeline(
            vae=bundle.vae, text_encoder=bundle.text_encoders[0], text_encoder_2=bundle.text_encoders[1],
            tokenizer=bundle.tokenizers[0], tokenizer_2=bundle.tokenizers[1], unet=bundle.unet,
            scheduler=bundle.noise_scheduler,
        )  # fmt: skip
    return StableDiffusionPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoders[0], tokenizer=bundle.tokenizers[0],
        unet=bundle.unet, scheduler=bundle.noise_scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


# --- bad input ------------------------------------------------------------------------------------------


def test_bad_network_settings_are_refused_with_the_value() -> None:
    with pytest.raises(ConfigError, match="rank"):
        NetworkSpec(rank=0)
    with pytest.raises(ConfigError, match="alpha"):
        NetworkSpec.from_dict({"alpha": "abc"})
    with pytest.raises(ConfigError, match="not a number"):
        NetworkSpec(alpha=float("nan"))
    with pytest.raises(ConfigError, match="expected one of"):
        NetworkSpec.from_dict({"type": "glora"})
    with pytest.raises(ConfigError, match="no output dropout to loha"):
        NetworkSpec(type="loha", dropout=0.1)
    with pytest.raises(ConfigError, match="NAME=RANK"):
        NetworkSpec(block_ranks="input_blocks_4:8")
    with pytest.raises(ConfigError, match="larger than layer"):
        LoraNetwork(tiny_bundle("sd1"), NetworkSpec(rank=1000), text_encoders=False)


def test_a_network_type_the_library_lacks_is_named_with_the_fix(monkeypatch) -> None:
    import lycoris.modules

    monkeypatch.delattr(lycoris.modules, "LokrModule")
    with pytest.raises(ConfigError, match=r"lokr.*LokrModule.*pip install -U lycoris-lora"):
        LoraNetwork(tiny_bundle("sd1"), NetworkSpec(type="lokr"), text_encoders=False)


def test_block_ranks_set_and_leave_out_unet_blocks() -> None:
    bundle = tiny_bundle("sd1")
    spec = NetworkSpec(rank=4, block_ranks="input_blocks=2, input_blocks_1=8, output_blocks=0")
    network = LoraNetwork(bundle, spec, text_encoders=False)
    ranks = {key: lyco.lora_dim for key, lyco in network.networks.items()}
    assert (
        ranks["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"] == 8
    )  # input_blocks_1
    assert (
        ranks["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"] == 2
    )  # input_blocks_4
    assert ranks["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"] == 4  # the default
    assert not any(key.startswith("lora_unet_up_blocks") for key in ranks)


def test_a_corrupt_or_foreign_file_is_refused(tmp_path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FormatError, match="not a readable LoRA"):
        read_lora(broken)
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(FormatError, match="no LoRA"):
        read_lora(tmp_path / "ckpt.safetensors")


def test_an_existing_file_is_kept_without_overwrite(train64, host) -> None:
    host.folders.lora.mkdir(parents=True, exist_ok=True)
    (host.folders.lora / "lorax.safetensors").write_bytes(b"mine")
    with pytest.raises(ConfigError, match="already exists"):
        run(make_job(train64), host)
    assert (host.folders.lora / "lorax.safetensors").read_bytes() == b"mine"


def test_apply_lora_skips_what_the_webui_skips() -> None:
    bundle = tiny_bundle("sd1")
    lora = LoraFile({"lora_unet_nowhere.lora_down.weight": torch.ones(1, 2),
                     "lora_unet_nowhere.lora_up.weight": torch.ones(2, 1)})  # fmt: skip
    applied = apply_lora(bundle, lora, 1.0)
    assert applied.skipped == ["lora_unet_nowhere"] and not applied.changed


@pytest.mark.slow
@pytest.mark.parametrize(("example", "network_type"), [("lora_tiny", "lora"), ("locon_tiny", "locon")])
def test_the_example_job_files_run_from_the_cli(tmp_path, example, network_type) -> None:
    from liandan import cli
    from liandan.jobs import load_job_file

    path = Path(__file__).resolve().parents[1] / "examples" / f"{example}.toml"
    job = load_job_file(path)
    assert isinstance(job, LoraJob) and job.network.type == network_type and job.data.folder.is_dir()
    assert cli.main(["train", str(path), "--data-dir", str(tmp_path / "data")]) == 0
    lora = read_lora(tmp_path / "data" / "models" / "Lora" / f"{job.name}.safetensors")
    assert lora.metadata["ss_steps"] == str(job.train.max_steps)
    convolutions = [
        key for key in lora.tensors if key.endswith("lora_down.weight") and lora.tensors[key].dim() == 4
    ]
    assert bool(convolutions) == (network_type == "locon")


@pytest.mark.slow
def test_a_lora_trains_on_concepts_with_class_images_made_first(train64, host, tmp_path) -> None:
    """DreamBooth's concepts: the missing class images are generated, then both datasets train."""
    from liandan.jobs import ConceptSpec

    concept = ConceptSpec(instance_folder=train64, instance_prompt="a photo of sks shape",
                          class_folder=tmp_path / "class", class_prompt="a photo of a shape",
                          num_class_images=2, class_steps=2)  # fmt: skip
    job = make_job(Path(), concepts=(concept,), prior_loss_weight=0.5, train={"max_steps": 2})
    result, _ = run(job, host)
    assert result.step == 2 and len(list((tmp_path / "class").glob("*.png"))) == 2
    dirs = json.loads(read_lora(host.folders.lora / "lorax.safetensors").metadata["ss_dataset_dirs"])
    assert sorted(dirs) == ["1_class", "1_train64"]
