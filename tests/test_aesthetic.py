"""Creating aesthetic embeddings (methods/aesthetic.py, formats/aesthetic.py) on the tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from a1111_safe_unpickler import check_pt
from safetensors import safe_open

from liandan.data.image_folder import open_image
from liandan.errors import ConfigError, DatasetError, FormatError
from liandan.formats.aesthetic import list_aesthetic_embeddings, load_aesthetic
from liandan.host.standalone import StandaloneHost
from liandan.jobs import AestheticJob, load_job_file
from liandan.methods.aesthetic import run_aesthetic_job
from liandan.models.clip_vision import load_towers
from liandan.models.tiny import tiny_bundle, write_tiny_models
from liandan.progress import Control, ProgressEvent, Reporter

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "examples" / "images"


@pytest.fixture
def host(tmp_path: Path) -> StandaloneHost:
    return StandaloneHost(tmp_path / "data")


def run(job: AestheticJob, host: StandaloneHost, control: Control | None = None) -> tuple[list[Path], list]:
    events: list[ProgressEvent] = []
    written = run_aesthetic_job(job, host, Reporter(events.append), control or Control())
    return written, events


def test_the_embedding_is_the_normalised_mean_of_unit_features_in_both_layouts(host, tmp_path) -> None:
    job = AestheticJob(name="shapes", folder=IMAGES, batch_size=3)
    written, events = run(job, host)
    folder = host.folders.aesthetic_embeddings
    assert written == [folder / "shapes.pt", folder / "shapes.safetensors"]
    # one step event per batch: 4 images in batches of 3
    assert [(e.step, e.total) for e in events if e.kind == "step"] == [(3, 4), (4, 4)]

    (tower,) = load_towers(tiny_bundle("sd1"), host.folders.models)
    images = sorted(IMAGES.glob("*.png"))
    features = tower.image_features([open_image(p) for p in images])
    expected = torch.nn.functional.normalize(features.mean(dim=0, keepdim=True), dim=-1)

    check_pt(written[0])  # a stock A1111 with safe-unpickle on accepts the file
    old_layout = torch.load(written[0], weights_only=True)
    assert isinstance(old_layout, torch.Tensor) and old_layout.shape == (1, 32)  # the old extension's layout
    torch.testing.assert_close(old_layout, expected)
    with safe_open(str(written[1]), framework="pt") as handle:
        metadata = handle.metadata()
        assert list(handle.keys()) == ["clip_l"]
    assert metadata["family"] == "sd1" and metadata["image_count"] == "4"
    assert metadata["clip_model"] == "liandan-tiny-sd1"
    loaded = load_aesthetic(written[1])
    torch.testing.assert_close(loaded.features["clip_l"], expected)
    assert list_aesthetic_embeddings(folder) == {"shapes": folder / "shapes.safetensors"}
    assert (folder / "shapes.liandan.json").is_file()

    with pytest.raises(FormatError, match="exists"):
        run(job, host)


def test_sdxl_keeps_one_feature_per_tower(tmp_path) -> None:
    models = tmp_path / "data" / "models" / "Stable-diffusion"
    path = write_tiny_models(models)["sdxl"]
    host = StandaloneHost(tmp_path / "data", checkpoint=path)
    written, _ = run(AestheticJob(name="xl", folder=IMAGES, file_format="pt"), host)
    check_pt(written[0])
    data = torch.load(written[0], weights_only=True)
    assert {key: tuple(v.shape) for key, v in data.items()} == {"clip_l": (1, 64), "clip_g": (1, 128)}
    assert all(abs(float(v.norm()) - 1) < 1e-5 for v in data.values())


def test_recursive_finds_images_in_subfolders_and_an_image_less_folder_is_refused(host, tmp_path) -> None:
    nested = tmp_path / "set" / "inner"
    nested.mkdir(parents=True)
    shutil.copy(IMAGES / "shape0.png", nested)
    (tmp_path / "set" / "notes.txt").write_text("no pictures here")
    with pytest.raises(DatasetError, match="no usable image"):
        run(AestheticJob(name="a", folder=tmp_path / "set"), host)
    written, _ = run(AestheticJob(name="a", folder=tmp_path / "set", recursive=True), host)
    assert load_aesthetic(written[0]).image_count == 0  # the .pt keeps the old layout: no metadata
    assert load_aesthetic(written[1]).image_count == 1
    with pytest.raises(DatasetError, match="does not exist"):
        run(AestheticJob(name="b", folder=tmp_path / "missing"), host)


def test_an_interrupt_writes_nothing(host) -> None:
    control = Control()
    control.interrupt()
    written, events = run(AestheticJob(name="stop", folder=IMAGES, batch_size=1), host, control)
    assert written == [] and not list(host.folders.aesthetic_embeddings.iterdir())
    assert "interrupted" in events[-1].message


def test_an_old_extension_file_loads_normalised(tmp_path) -> None:
    """The aesthetic-gradients extension saved torch.save(mean of raw CLIP features) as [1, 768]."""
    raw = torch.randn(1, 768) * 7
    path = tmp_path / "cloudcore.pt"
    torch.save(raw, path)
    loaded = load_aesthetic(path)
    assert loaded.name == "cloudcore" and list(loaded.features) == [""]
    torch.testing.assert_close(loaded.features[""], raw / raw.norm())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a torch file", "not a PyTorch file, or a corrupt one"),
        (None, "is zero or not finite"),
        ("shape", r"is \[2, 3\]; expected a tensor \[1, D\]"),
    ],
)
def test_a_corrupt_embedding_file_is_refused_clearly(tmp_path, content, message) -> None:
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save(torch.zeros(1, 8), path)
    elif content == "shape":
        torch.save(torch.ones(2, 3), path)
    else:
        path.write_bytes(content)
    with pytest.raises(FormatError, match=message):
        load_aesthetic(path)
    damaged = tmp_path / "bad.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(FormatError, match="not a safetensors file"):
        load_aesthetic(damaged)


def test_the_job_is_checked_when_it_is_made(tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs a name"):
        AestheticJob(folder=IMAGES)
    with pytest.raises(ConfigError, match="needs an image folder"):
        AestheticJob(name="x")
    with pytest.raises(ConfigError, match=r"batch_size = 0 is out of range"):
        AestheticJob(name="x", folder=IMAGES, batch_size=0)


def test_the_example_job_file_runs(tmp_path) -> None:
    job = load_job_file(REPO / "examples" / "aesthetic_tiny.toml")
    assert isinstance(job, AestheticJob) and job.folder == IMAGES
    written, _ = run(job, StandaloneHost(tmp_path / "data"))
    assert [p.name for p in written] == ["tiny_aesthetic.pt", "tiny_aesthetic.safetensors"]


def test_liandan_info_tells_an_aesthetic_embedding_from_a_textual_inversion_one(tmp_path) -> None:
    from liandan.formats.aesthetic import AestheticEmbedding, save_aesthetic
    from liandan.formats.identify import identify

    old = tmp_path / "old.pt"
    torch.save(torch.randn(1, 768), old)  # the old extension's file, from ViT-L/14
    info = identify(old)
    assert info.kind.startswith("aesthetic embedding") and info.family == "sd1"
    features = {"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}  # the keys SDXL TI files use
    xl = save_aesthetic(AestheticEmbedding(features, family="sdxl", clip_model="x", image_count=3),
                        tmp_path / "xl.safetensors")  # fmt: skip
    info = identify(xl)
    assert info.kind.startswith("aesthetic embedding") and info.family == "sdxl"
    assert "from 3 images through x" in info.details


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickled_payload_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"clip_l": _Payload(marker)}, path)
    with pytest.raises(FormatError, match=r"refused to load.*nothing in it was run"):
        load_aesthetic(path)
    assert not marker.exists()
