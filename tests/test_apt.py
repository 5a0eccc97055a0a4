"""APT end to end on the tiny models: the pair A1111 loads (with its usage note), step copies and cards, the
image evidence (the pair changes a fixed-seed image, differently from the positive alone), the loss falls,
bit-exact resume, the optional terms (reconstruction, attention maps, EMA, discriminator), SD2 and SDXL, and
bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from a1111_safe_unpickler import check_pt
from PIL import Image

from liandan.errors import ConfigError
from liandan.formats.embedding import load_embedding
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import run_job
from liandan.jobs import AptJob, DataSpec, PreviewSpec, TrainSpec, ValidationSpec
from liandan.methods.apt import Apt, create_apt_pair, usage_note
from liandan.models.sampling import generate
from liandan.models.tiny import tiny_bundle
from liandan.progress import Control, Reporter
from liandan.train.training_job import MethodContext, build_dataset


def make_job(folder: Path, name: str = "aptx", **changes) -> AptJob:
    train = {"learn_rate": "0.005", "max_steps": 4, "save_every": 2, "preview_every": 2, "seed": 0}
    train.update(changes.pop("train", {}))
    preview = {"steps": 2, "width": 64, "height": 64, "seed": 1, "self_test": True}
    preview.update(changes.pop("preview", {}))
    data = {"folder": folder, "width": 64, "height": 64}
    data.update(changes.pop("data", {}))
    return AptJob(name=name, init_text="a photo", neg_init_text="blurry", train=TrainSpec(**train),
                  data=DataSpec(**data), preview=PreviewSpec(**preview), **changes)  # fmt: skip


def run(job: AptJob, host: StandaloneHost, control: Control | None = None, on_event=None):
    events = []

    def record(event) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    return run_job(job, host, Reporter(record), control or Control()), events


def losses(host: StandaloneHost, name: str = "aptx") -> list[float]:
    (path,) = host.folders.logs.glob(f"*/{name}/apt_loss.csv")
    with open(path, newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.fixture
def host(tmp_path: Path) -> StandaloneHost:
    return StandaloneHost(tmp_path / "data")


QUIET = {
    "train": {"save_every": 0, "preview_every": 0},
    "preview": {"self_test": False},
    "save_png_cards": False,
}


def quiet_job(folder: Path, **changes) -> AptJob:
    train = {**QUIET["train"], **changes.pop("train", {})}
    return make_job(folder, train=train, preview=QUIET["preview"], save_png_cards=False, **changes)


def direct_context(job: AptJob, host: StandaloneHost, bundle) -> MethodContext:
    """What the runner hands a method, built without running a job (CPU, the job's dataset)."""
    dataset = build_dataset(job.data, job.train, name=job.name, bundle=bundle, host=host, model_id=None)
    checkpoint = host.resolve_checkpoint("")
    return MethodContext(job, host, checkpoint, bundle, dataset, host.folders.logs, torch.device("cpu"))


# --- the pair -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_writes_a_pair_a1111_loads_and_the_pair_changes_the_image(train64, host) -> None:
    refreshed: list[str] = []
    host.refresh = refreshed.append  # the WebUI host reloads its embedding list here
    result, events = run(make_job(train64), host)
    assert result.step == 4 and result.stopped_reason == "max_steps"
    assert refreshed == ["embeddings"]

    folder = host.folders.embeddings
    positive, negative = load_embedding(folder / "aptx.pt"), load_embedding(folder / "aptx-neg.pt")
    for path in (folder / "aptx.pt", folder / "aptx-neg.pt", folder / "aptx.pt.optim"):
        check_pt(path)  # A1111's safe unpickler accepts it
    assert (positive.name, negative.name) == ("aptx", "aptx-neg")  # A1111 names them by file stem
    assert positive.single.shape == (3, 32) and negative.single.shape == (6, 32)  # the default counts
    assert positive.step == negative.step == 4
    assert positive.usage == negative.usage == usage_note("aptx", "aptx-neg")
    assert "negative prompt" in positive.usage and "3-5" in positive.usage
    assert positive.sd_checkpoint_name == "liandan-tiny-sd1"

    run_dir = next(host.folders.logs.glob("*/aptx"))
    for step in (2, 4):
        for name in (f"aptx-{step}", f"aptx-neg-{step}"):
            check_pt(run_dir / "embeddings" / f"{name}.pt")
            assert load_embedding(run_dir / "embeddings" / f"{name}.pt").step == step
            card = load_embedding(run_dir / "image_embeddings" / f"{name}.png")
            assert card.name == name and card.step == step
        assert (run_dir / "images" / f"aptx-{step}-selftest.png").is_file()
    assert torch.equal(card.single, negative.single)
    assert not any("did not change" in (e.message or "") for e in events)
    assert [e for e in events if e.kind == "done"][-1].paths[:2] == (
        folder / "aptx.pt",
        folder / "aptx-neg.pt",
    )

    bundle = tiny_bundle("sd1")
    kwargs = {"steps": 3, "cfg_scale": 4.0, "seed": 3, "width": 64, "height": 64}
    pair = {"aptx": positive.single, "aptx-neg": negative.single}
    baseline = generate(bundle, "a photo of aptx", **kwargs)
    positive_only = generate(bundle, "a photo of aptx", embeddings=pair, **kwargs)
    with_pair = generate(bundle, "a photo of aptx", "aptx-neg", embeddings=pair, **kwargs)
    assert len({baseline.tobytes(), positive_only.tobytes(), with_pair.tobytes()}) == 3


@pytest.mark.slow
def test_the_validation_loss_falls(train64, host) -> None:
    """Scored with fixed noise at fixed timesteps, so a fall is training, not a luckier draw (the tiny random
    model's loss is mostly noise it cannot predict: the fall is small but real)."""
    validation = ValidationSpec(folder=train64, width=64, height=64, every=3, timesteps=4)
    job = quiet_job(train64, validation=validation, train={"learn_rate": "0.05", "max_steps": 36})
    _, events = run(job, host)
    scores = [e.extra["validation_loss"] for e in events if e.extra and "validation_loss" in e.extra]
    assert len(scores) == 12
    assert scores[-1] < scores[0] - 0.005, scores


@pytest.mark.slow
def test_resume_is_bit_exact(train64, tmp_path) -> None:
    """Interrupted at step 3 and resumed, with a CFG range, EMA and a smaller negative rate, the pair is the
    same to the bit as one straight run's, and so is every logged loss."""
    job = quiet_job(train64, cfg_scale="2-6:cos", ema_decay=0.5, neg_lr_scale=0.5, train={"max_steps": 6})
    straight = StandaloneHost(tmp_path / "straight")
    run(job, straight)

    resumed, control = StandaloneHost(tmp_path / "resumed"), Control()

    def stop_at_three(event) -> None:
        if event.kind == "step" and event.step == 3:
            control.interrupt()

    first, _ = run(job, resumed, control, stop_at_three)
    assert first.stopped_reason == "interrupted" and first.step == 3
    second, _ = run(job, resumed)
    assert (second.start_step, second.step) == (3, 6)
    for name in ("aptx.pt", "aptx-neg.pt"):
        a, b = (load_embedding(h.folders.embeddings / name) for h in (straight, resumed))
        assert torch.equal(a.single, b.single), name
    assert losses(straight) == losses(resumed)


@pytest.mark.slow
def test_training_further_continues_the_pair_from_its_step_and_optimizer_state(
    train64, host, tmp_path
) -> None:
    first = quiet_job(train64, train={"max_steps": 2, "resume": False})
    run(first, host)
    again = first.replace(train=first.train.replace(max_steps=4), log_dir=tmp_path / "logs2")
    result, events = run(again, host)
    assert (result.start_step, result.step) == (2, 4)
    assert any("continuing with the optimizer state" in (e.message or "") for e in events)
    assert load_embedding(host.folders.embeddings / "aptx-neg.pt").step == 4


def test_an_attention_map_follows_its_image_crop_and_flip(train64, host, tmp_path) -> None:
    from liandan.methods.apt import new_pair

    train64 = shutil.copytree(train64, tmp_path / "with_maps")  # a dataset that comes with its maps
    Image.linear_gradient("L").rotate(90).resize((64, 64)).save(train64 / "img0_att.png")  # dark left
    job = quiet_job(train64, attention_maps=True)
    bundle = tiny_bundle("sd1")
    method = Apt(direct_context(job, host, bundle), *new_pair(bundle, job), (Path("a.pt"), Path("a-neg.pt")))
    path = str(train64 / "img0.png")
    weight, mirrored = (
        method._attention_weight(path, False, (8, 8)),
        method._attention_weight(path, True, (8, 8)),
    )
    assert weight.shape == (1, 8, 8) and float(weight.mean()) == pytest.approx(1.0)
    assert float(weight[0, :, 0].mean()) < float(weight[0, :, -1].mean())  # grey level → weight
    assert torch.equal(mirrored, weight.flip(-1))
    assert torch.equal(
        method._attention_weight(str(train64 / "img1.png"), False, (8, 8)), torch.ones(1, 8, 8)
    )


# --- the optional terms ---------------------------------------------------------------------------------


def _scorer_file(path: Path, architecture: str = "mobilenet_v3_small") -> Path:
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    network = torchvision.models.get_model(architecture, weights=None, num_classes=1)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return path


@pytest.mark.slow
@pytest.mark.webui_env  # the discriminator is a torchvision model
def test_each_optional_term_enters_the_loss(train64, host, tmp_path) -> None:
    """Same seed, same first batch: the reconstruction loss, the attention maps and the discriminator each
    change the first step's loss; EMA changes what is saved, not the loss."""
    train64 = shutil.copytree(train64, tmp_path / "with_maps")  # a dataset that comes with its maps
    Image.new("L", (64, 64), 0).save(train64 / "img0_att.png")  # black: img0 weighs nothing...
    Image.linear_gradient("L").resize((64, 64)).save(train64 / "img1_att.png")
    scorer = _scorer_file(tmp_path / "scorer.safetensors")
    variants = {
        "plain": {},
        "recon": {"reconstruction_weight": 1.0},
        "att": {"attention_maps": True, "train": {"batch_size": 4}},
        "plainbatch": {"train": {"batch_size": 4}},
        "disc": {
            "discriminator": scorer,
            "discriminator_arch": "mobilenet_v3_small",
            "discriminator_weight": 1.0,
        },
        "ema": {"ema_decay": 0.9},
    }
    first, saved, said = {}, {}, {}
    for name, changes in variants.items():
        train = {"max_steps": 2, **changes.pop("train", {})}
        job = quiet_job(train64, name=name, train=train, **changes)
        _, events = run(job, host)
        said[name] = [e.message or "" for e in events]
        first[name] = losses(host, name)[0]
        saved[name] = load_embedding(host.folders.embeddings / f"{name}.pt").single
    assert first["recon"] > first["plain"]  # an L1 term on top of the same denoising loss
    assert first["disc"] > first["plain"]  # softplus(-score) is positive
    assert first["att"] != first["plainbatch"]
    assert first["ema"] == first["plain"] and not torch.equal(saved["ema"], saved["plain"])
    assert any("attention maps: 2 of 4 images" in m for m in said["att"])  # the maps are no training images


@pytest.mark.slow
def test_sdxl_trains_a_pair_for_both_encoders_and_sd2_v_prediction_trains(train64, host) -> None:
    from liandan.models.saving import save_checkpoint

    host.current_checkpoint()  # writes the tiny models
    # batch 2: each image's size conditioning goes with both of its branches
    sdxl = quiet_job(train64, model="liandan-tiny-sdxl", train={"max_steps": 2, "batch_size": 2})
    result, _ = run(sdxl, host)
    assert result.step == 2
    for name, count in (("aptx", 3), ("aptx-neg", 6)):
        saved = load_embedding(host.folders.embeddings / f"{name}.safetensors")  # A1111 .pt holds one tensor
        assert saved.is_sdxl and saved.widths == [64, 128] and saved.num_vectors == count
        assert saved.step == 2 and saved.usage == usage_note("aptx", "aptx-neg")

    checkpoint = save_checkpoint(tiny_bundle("sd2"), host.folders.checkpoints / "tiny-sd2.safetensors")
    job = quiet_job(train64, name="two", model=str(checkpoint), file_format="safetensors",
                    reconstruction_weight=0.5, train={"max_steps": 2})  # fmt: skip
    result, _ = run(job, host)
    assert result.step == 2 and result.last_loss is not None
    assert load_embedding(host.folders.embeddings / "two-neg.safetensors").widths == [64]


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ("5-3", "goes down"),
        ("a-b", "not a number"),
        ("3-5:unknowncurve", "unknown curve"),
        ("5:cos", "range"),
    ],
)
def test_a_malformed_cfg_scale_is_refused_when_the_job_is_made(cfg: str, message: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match=message):
        make_job(tmp_path, cfg_scale=cfg)


def test_a_negative_that_exists_is_refused_without_overwrite(train64, host) -> None:
    (host.folders.embeddings / "aptx-neg.pt").write_bytes(b"")
    job = quiet_job(train64, train={"max_steps": 1})
    with pytest.raises(ConfigError, match="'aptx-neg' already exists"):
        create_apt_pair(host, job)
    with pytest.raises(ConfigError, match="'aptx-neg' exists but 'aptx' does not"):
        run(job, host)
    path = create_apt_pair(host, job.replace(overwrite=True))
    assert path == host.folders.embeddings / "aptx.pt"
    assert load_embedding(host.folders.embeddings / "aptx-neg.pt").num_vectors == 6


@pytest.mark.slow
@pytest.mark.webui_env  # the discriminator is a torchvision model
def test_a_discriminator_of_another_architecture_stops_the_job_with_a_clear_error(train64, host, tmp_path):
    """(Every bad file is in test_image_scorer.py; here: the job says it before training.)"""
    wrong = _scorer_file(tmp_path / "resnet.safetensors", "resnet18")
    job = quiet_job(train64, discriminator=wrong, discriminator_arch="mobilenet_v3_small")
    with pytest.raises(ConfigError, match=r"resnet\.safetensors is not a mobilenet_v3_small with a one"):
        run(job, host)
    assert not list(host.folders.logs.glob("*/aptx/apt_loss.csv"))


def test_a_reconstruction_loss_without_a_vae_is_refused(train64, host) -> None:
    job = quiet_job(train64, reconstruction_weight=1.0)
    bundle = tiny_bundle("sd1")
    context = direct_context(job, host, bundle)
    bundle.vae = None
    with pytest.raises(ConfigError, match="VAE"):
        Apt(context, None, None, (Path(), Path()))  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_example_job_file_runs_from_the_cli(tmp_path) -> None:
    from liandan import cli
    from liandan.jobs import load_job_file

    example = Path(__file__).resolve().parents[1] / "examples" / "apt_tiny.toml"
    job = load_job_file(example)
    assert isinstance(job, AptJob) and job.cfg_scale == "3-5:cos" and job.data.folder.is_dir()
    assert cli.main(["train", str(example), "--data-dir", str(tmp_path / "data")]) == 0
    folder = tmp_path / "data" / "embeddings"
    for name in ("tiny_apt.pt", "tiny_apt-neg.pt"):
        check_pt(folder / name)
        assert load_embedding(folder / name).step == job.train.max_steps


def test_the_guided_prediction_is_one_unet_call_of_both_branches(train64, host) -> None:
    """ε = ε_neg + cfg · (ε_pos − ε_neg), with both branches in ONE UNet call of twice the batch: the loss
    equals the one computed from two separate calls."""
    from liandan.methods.apt import new_pair
    from liandan.models.conditioning import PromptEncoder

    job = quiet_job(train64, cfg_scale="4")
    bundle = tiny_bundle("sd1")
    context = direct_context(job, host, bundle)
    method = Apt(context, *new_pair(bundle, job), (Path("a.pt"), Path("a-neg.pt")))
    calls = []
    handle = bundle.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    latents = torch.randn(2, 4, 8, 8)
    batch = {"latents": latents, "prompts": ["a photo of aptx", "aptx"], "noise": torch.randn(2, 4, 8, 8),
             "timesteps": torch.tensor([100, 700])}  # fmt: skip
    loss = method.loss(batch)
    assert calls == [4]

    encoder = PromptEncoder(bundle)
    embeddings = {"aptx": method.pair["positive"].params[0], "aptx-neg": method.pair["negative"].params[0]}
    noisy = bundle.noise_scheduler.add_noise(latents, batch["noise"], batch["timesteps"])
    with torch.no_grad():
        positive = bundle.unet(
            noisy, batch["timesteps"], encoder.encode(batch["prompts"], embeddings).context
        )
        negative = bundle.unet(
            noisy, batch["timesteps"], encoder.encode(["aptx-neg"] * 2, embeddings).context
        )
    handle.remove()
    guided = negative.sample + 4.0 * (positive.sample - negative.sample)
    expected = torch.nn.functional.mse_loss(guided, batch["noise"])
    assert torch.allclose(loss, expected, rtol=1e-4, atol=1e-6)
    loss.backward()  # both embeddings get gradients through the one call
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.pair.parameters())
