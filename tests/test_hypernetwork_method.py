"""Hypernetworks end to end on tiny models: create with every option, refuse bad input, train through the
real runner (CSV, files, .optim, resume), and the strength contract on a generated image."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from a1111_safe_unpickler import check_pt

from liandan.errors import ConfigError, FormatError
from liandan.formats.hypernetwork import load_hypernetwork, load_hypernetwork_optimizer
from liandan.host.standalone import StandaloneHost
from liandan.jobs import DataSpec, HypernetworkJob, PreviewSpec, TrainSpec
from liandan.methods.hypernetwork import (
    LOSS_CSV,
    build_hypernetwork,
    create_hypernetwork,
    run_hypernetwork_job,
)
from liandan.models.attention_hooks import install_kv_transforms
from liandan.models.sampling import generate
from liandan.models.tiny import tiny_bundle, write_tiny_models
from liandan.progress import Control, ProgressEvent, Reporter

TINY_WIDTHS = [32, 64, 128]  # the fixtures' tiny SD1: context 32, self-attention 32/64/128


@pytest.fixture
def host(fixtures_dir: Path, tmp_path: Path) -> StandaloneHost:
    return StandaloneHost(tmp_path / "data", checkpoint=fixtures_dir / "model" / "tiny-sd1.safetensors")


def _job(train64: Path, **options) -> HypernetworkJob:
    train = {"learn_rate": "0.0001", "max_steps": 4, "save_every": 2, "preview_every": 0}
    train.update(options.pop("train", {}))
    return HypernetworkJob(
        name=options.pop("name", "hn"),
        train=TrainSpec(**train),
        data=DataSpec(
            folder=train64, width=64, height=64, template=options.pop("template", "liandan_hypernetwork.txt")
        ),
        preview=PreviewSpec(steps=2, width=64, height=64, seed=3, self_test=False),
        **options,
    )


# --- create -------------------------------------------------------------------------------------------


CREATE_OPTIONS = [
    {},
    {"layer_structure": "1, 2, 2, 1", "activation": "swish", "weight_init": "KaimingNormal",
     "layer_norm": True, "use_dropout": True, "dropout_structure": "0, 0.3, 0.3, 0"},
    {"layer_structure": "1, 1.5, 0.5, 1", "activation": "relu", "weight_init": "XavierUniform"},
    {"activation": "mish", "weight_init": "XavierNormal", "activate_output": True},
    {"activation": "leakyrelu", "weight_init": "KaimingUniform", "sizes": (32, 128)},
    {"layer_structure": "1, 2, 2, 1", "use_dropout": True, "last_layer_dropout": True},
]  # fmt: skip


@pytest.mark.parametrize("options", CREATE_OPTIONS)
def test_create_writes_a_file_a1111_loads_with_the_chosen_options(host, options) -> None:
    job = HypernetworkJob(name="made", **options)
    path = create_hypernetwork(host, job)
    assert path == host.folders.hypernetworks / "made.pt"
    check_pt(path)  # A1111's safe unpickler accepts it
    raw = torch.load(path, weights_only=True)
    assert sorted(k for k in raw if isinstance(k, int)) == sorted(options.get("sizes", TINY_WIDTHS))
    assert raw["name"] == "made" and raw["step"] == 0
    assert raw["activation_func"] == options.get("activation", "linear")
    assert raw["weight_initialization"] == options.get("weight_init", "Normal")
    assert raw["is_layer_norm"] == options.get("layer_norm", False)
    assert raw["activate_output"] == options.get("activate_output", False)
    loaded = load_hypernetwork(path, TINY_WIDTHS)
    expected_layers = [float(v) for v in options.get("layer_structure", "1, 2, 1").split(",")]
    assert loaded.layer_structure == expected_layers
    linears = [m for m in loaded.pair(32)[0].linear if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [int(32 * v) for v in expected_layers[1:]]


def test_dropout_structure_rules() -> None:
    """ "" means zeros without dropout and A1111's legacy default with it; an explicit one is kept."""
    assert build_hypernetwork(HypernetworkJob(name="a"), [32]).dropout_structure == [0, 0, 0]
    job = HypernetworkJob(name="a", layer_structure="1, 2, 2, 1", use_dropout=True)
    assert build_hypernetwork(job, [32]).dropout_structure == [0, 0.3, 0, 0]
    job = job.replace(last_layer_dropout=True)
    assert build_hypernetwork(job, [32]).dropout_structure == [0, 0.3, 0.3, 0]
    job = job.replace(dropout_structure="0, 0.1, 0.2, 0")
    hypernetwork = build_hypernetwork(job, [32])
    assert hypernetwork.dropout_structure == [0, 0.1, 0.2, 0]
    assert [m.p for m in hypernetwork.pair(32)[0].linear if isinstance(m, torch.nn.Dropout)] == [0.1, 0.2]


def test_the_initial_weights_follow_the_jobs_seed_and_leave_the_global_generator_alone() -> None:
    job = HypernetworkJob(name="a", weight_init="XavierNormal")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = build_hypernetwork(job, [32]).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    again = build_hypernetwork(job, [32]).state_dict()
    other = build_hypernetwork(job.replace(train=job.train.replace(seed=1)), [32]).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["pairs.32.0.linear.0.weight"], other["pairs.32.0.linear.0.weight"])


def test_create_refuses_to_replace_unless_overwrite(host) -> None:
    first = create_hypernetwork(host, HypernetworkJob(name="same"))
    before = first.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        create_hypernetwork(host, HypernetworkJob(name="same", layer_structure="1, 3, 1"))
    assert first.read_bytes() == before
    create_hypernetwork(host, HypernetworkJob(name="same", layer_structure="1, 3, 1", overwrite=True))
    assert load_hypernetwork(first).layer_structure == [1, 3, 1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"layer_structure": "1, 2"}, "start and end with 1"),
        ({"layer_structure": "2, 1"}, "start and end with 1"),
        ({"layer_structure": "1, abc, 1"}, "'abc' is not a number"),
        ({"layer_structure": "1, -2, 1"}, "-2.0 is out of range"),
        ({"activation": "sparkle"}, "unknown hypernetwork activation 'sparkle'"),
        ({"use_dropout": True, "dropout_structure": "0, 0.3, 0.3, 0"}, "has 4 entries"),
        ({"use_dropout": True, "dropout_structure": "0, 1.0, 0"}, "not a probability"),
        ({"use_dropout": True, "dropout_structure": "0, -0.1, 0"}, "not a probability"),
        ({"name": ""}, "needs a name"),
        ({"name": "a/b"}, "not allowed"),
    ],
)
def test_bad_options_are_refused_when_the_job_is_made(options, message) -> None:
    """Before any model work: the spec itself cannot be built, so no runner ever sees it."""
    with pytest.raises(ConfigError, match=message):
        HypernetworkJob(**{"name": "bad", **options})


def test_sizes_the_model_lacks_are_refused(host) -> None:
    with pytest.raises(ConfigError, match=r"sizes \[768\] do not exist in this model.*\[32, 64, 128\]"):
        create_hypernetwork(host, HypernetworkJob(name="wide", sizes=(768, 32)))
    assert not (host.folders.hypernetworks / "wide.pt").exists()


def test_a_file_from_another_family_is_refused_for_training(tmp_path, fixtures_dir, train64) -> None:
    """goldhn_a (tiny SD1: 32/64/128) on the tiny SDXL (64/128/192) has no layer of width 32."""
    data = tmp_path / "xl"
    models = write_tiny_models(data / "models" / "Stable-diffusion")
    host = StandaloneHost(data, checkpoint=models["sdxl"])
    shutil.copy(fixtures_dir / "hypernetworks" / "goldhn_a.pt", host.folders.hypernetworks / "goldhn_a.pt")
    with pytest.raises(FormatError, match=r"another model family"):
        run_hypernetwork_job(_job(train64, name="goldhn_a"), host, Reporter(), Control())


# --- train --------------------------------------------------------------------------------------------


def _csv_rows(run_root: Path) -> list[list[str]]:
    (path,) = run_root.rglob(LOSS_CSV)
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_training_through_the_runner_writes_what_a1111_reads(host, train64) -> None:
    created = build_hypernetwork(HypernetworkJob(name="hn"), TINY_WIDTHS).state_dict()
    messages: list[str] = []
    result = run_hypernetwork_job(
        _job(train64), host, Reporter(lambda e: messages.append(e.message)), Control()
    )
    assert (result.step, result.stopped_reason) == (4, "max_steps")
    # the summary every method prints, last: where the file went and the loss
    assert messages[-1].startswith(f"saved {host.folders.hypernetworks / 'hn.pt'}: 4 step(s), last loss ")

    final = host.folders.hypernetworks / "hn.pt"
    check_pt(final)
    check_pt(Path(f"{final}.optim"))
    trained = load_hypernetwork(final, TINY_WIDTHS)
    assert trained.step == 4 and trained.name == "hn"
    assert trained.sd_checkpoint == "86f83915b6" and trained.sd_checkpoint_name == "tiny-sd1"  # as A1111
    name, optimizer_state = load_hypernetwork_optimizer(final)
    assert name == "AdamW" and optimizer_state is not None
    assert len(optimizer_state["param_groups"][0]["params"]) == len(list(trained.parameters()))
    state = trained.state_dict()
    assert created.keys() == state.keys()
    assert any(not torch.equal(created[k], state[k]) for k in state)  # training moved the weights

    rows = _csv_rows(host.folders.logs)
    assert rows[0] == ["step", "epoch", "epoch_step", "loss", "learn_rate"]
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4]
    (run_dir,) = {p.parent for p in host.folders.logs.rglob(LOSS_CSV)}
    copies = sorted(p.name for p in (run_dir / "hypernetworks").iterdir())
    assert copies == ["hn-2.pt", "hn-2.pt.optim", "hn-4.pt", "hn-4.pt.optim"]
    assert load_hypernetwork(run_dir / "hypernetworks" / "hn-2.pt").step == 2


def test_interrupted_run_resumes_and_an_existing_file_trains_on(host, train64) -> None:
    control = Control()

    def stop_at_two(event: ProgressEvent) -> None:
        if event.kind == "step" and event.step == 2:
            control.interrupt()

    job = _job(train64, train={"max_steps": 5, "save_every": 0})
    first = run_hypernetwork_job(job, host, Reporter(stop_at_two), control)
    assert (first.step, first.stopped_reason) == (2, "interrupted")
    assert load_hypernetwork(host.folders.hypernetworks / "hn.pt").step == 2

    resumed = run_hypernetwork_job(job, host, Reporter(), Control())
    assert (resumed.start_step, resumed.step) == (2, 5)
    assert load_hypernetwork(host.folders.hypernetworks / "hn.pt").step == 5
    assert [int(r[0]) for r in _csv_rows(host.folders.logs)[1:]] == [1, 2, 3, 4, 5]

    # a fresh run (no saved state) on the existing file continues its step count up to max_steps, as
    # A1111's Train does, starting from the optimizer state in the file's .optim sidecar
    again = job.replace(train=job.train.replace(resume=False, max_steps=7))
    run_hypernetwork_job(again, host, Reporter(), Control())
    assert load_hypernetwork(host.folders.hypernetworks / "hn.pt").step == 7


@pytest.mark.slow
def test_sdxl_trains_a_few_steps(tmp_path, train64) -> None:
    data = tmp_path / "xl"
    models = write_tiny_models(data / "models" / "Stable-diffusion")
    host = StandaloneHost(data, checkpoint=models["sdxl"])
    job = _job(train64, name="xl", train={"max_steps": 2, "save_every": 0})
    result = run_hypernetwork_job(job, host, Reporter(), Control())
    assert result.step == 2
    trained = load_hypernetwork(host.folders.hypernetworks / "xl.pt", [64, 128, 192])
    assert trained.sizes == [64, 128, 192]


@pytest.mark.slow
def test_two_hundred_steps_make_the_loss_fall(host, train64) -> None:
    """The issue's evidence run: 200 CPU steps on the tiny model, the loss falls."""
    job = _job(
        train64,
        weight_init="KaimingNormal",
        layer_structure="1, 2, 1",
        template="liandan_none.txt",
        train={"learn_rate": "0.0005", "max_steps": 200, "save_every": 0, "batch_size": 4, "seed": 1},
    )
    run_hypernetwork_job(job, host, Reporter(), Control())
    losses = [float(r[3]) for r in _csv_rows(host.folders.logs)[1:]]
    assert len(losses) == 200
    first, last = sum(losses[:50]) / 50, sum(losses[-50:]) / 50
    assert last < 0.9 * first, (first, last)


# --- apply --------------------------------------------------------------------------------------------


def test_strength_zero_is_bit_identical_to_none_and_strength_one_changes_the_image() -> None:
    bundle = tiny_bundle("sd1")
    widths = [32, 64, 128]
    hypernetwork = build_hypernetwork(HypernetworkJob(name="look", weight_init="KaimingNormal"), widths)

    def render():
        return generate(bundle, "a photo", steps=3, cfg_scale=5.0, seed=11, width=64, height=64)

    plain = render()
    handle = install_kv_transforms(bundle.unet, [hypernetwork])
    hypernetwork.strength = 0.0
    off = render()
    hypernetwork.strength = 1.0
    on = render()
    handle.remove()
    assert off.tobytes() == plain.tobytes()
    assert on.tobytes() != plain.tobytes()
    assert render().tobytes() == plain.tobytes()  # removed exactly


@pytest.mark.slow
def test_the_example_job_file_runs_from_the_cli(tmp_path) -> None:
    from liandan import cli
    from liandan.jobs import load_job_file

    example = Path(__file__).resolve().parents[1] / "examples" / "hypernetwork_tiny.toml"
    job = load_job_file(example)
    assert isinstance(job, HypernetworkJob) and job.train.learn_rate == "0.000005"
    assert job.data.folder.is_dir()  # the shipped example images, found from any working directory
    code = cli.main(
        [
            "train", str(example), "--data-dir", str(tmp_path / "data"),
            "--set", "train.max_steps=2", "--set", "preview.steps=2",
        ]
    )  # fmt: skip
    assert code == 0
    final = tmp_path / "data" / "models" / "hypernetworks" / "tiny_hn.pt"
    check_pt(final)
    assert load_hypernetwork(final).step == 2


def test_dropout_acts_only_in_training() -> None:
    job = HypernetworkJob(
        name="d", layer_structure="1, 2, 2, 1", use_dropout=True, dropout_structure="0, 0.5, 0.5, 0"
    )
    hypernetwork = build_hypernetwork(job, [32])
    x = torch.randn(2, 5, 32)
    k_module = hypernetwork.pair(32)[0]
    hypernetwork.train()
    assert not torch.equal(k_module(x), k_module(x))
    hypernetwork.eval()
    assert torch.equal(k_module(x), k_module(x))


def test_gradient_checkpointing_reaches_the_frozen_unet(host, train64, monkeypatch) -> None:
    """The hypernetwork's own layers are small: the switch must act on the UNet it trains through."""
    import torch.utils.checkpoint

    real_checkpoint, calls = torch.utils.checkpoint.checkpoint, []

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    job = _job(train64, train={"max_steps": 1, "save_every": 0, "gradient_checkpointing": True})
    result = run_hypernetwork_job(job, host, Reporter(), Control())
    assert result.step == 1 and calls


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_frozen_modules_take_the_mixed_precision_dtype_whatever_the_checkpoint_held(
    host, train64, mixed_precision
) -> None:
    """A checkpoint stored in half precision must not train in half without mixed precision (no loss
    scaling); with bf16 the frozen UNet is held in bf16 and the loss runs under autocast. The
    hypernetwork's own weights stay float32 either way."""
    from liandan.data.dataset import TrainingDataset
    from liandan.methods.hypernetwork import HypernetworkMethod
    from liandan.train.training_job import MethodContext

    job = _job(train64, train={"mixed_precision": mixed_precision})
    bundle = tiny_bundle("sd1").to("cpu", torch.bfloat16)  # as an fp16/bf16 checkpoint loads
    dataset = TrainingDataset(job.data, name="hn", vae=tiny_bundle("sd1").vae)
    context = MethodContext(job, host, None, bundle, dataset, host.folders.logs, torch.device("cpu"))  # type: ignore[arg-type]
    method = HypernetworkMethod(context, build_hypernetwork(job, TINY_WIDTHS))
    try:
        expected = torch.bfloat16 if mixed_precision == "bf16" else torch.float32
        frozen = [bundle.unet, *bundle.text_encoders]
        assert all(p.dtype == expected for module in frozen for p in module.parameters())
        assert all(p.dtype == torch.float32 for p in method.hypernetwork.parameters())
        batch = dataset.collate([dataset[0], dataset[1]])
        with torch.autocast("cpu", torch.bfloat16, enabled=mixed_precision == "bf16"):
            loss = method.loss(batch)
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.hypernetwork.parameters())
    finally:
        method.close()
