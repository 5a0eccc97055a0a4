"""Hypernetwork .pt files: A1111's golden files load, write back equal and pass A1111's safe unpickler."""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from a1111_safe_unpickler import check_pt

from liandan.errors import FormatError
from liandan.formats.a1111_pickle import load_pt, save_pt_a1111
from liandan.formats.hypernetwork import (
    file_short_hash,
    load_hypernetwork,
    load_hypernetwork_optimizer,
    optimizer_path,
    save_hypernetwork,
    save_hypernetwork_optimizer,
)
from liandan.models.hypernetwork_modules import Hypernetwork, default_sizes

TINY_WIDTHS = [32, 64, 128]  # the fixture model's context and self-attention widths


@pytest.mark.parametrize("stem", ["goldhn_a", "goldhn_b"])
def test_golden_files_load_with_identical_tensors_and_structure(fixtures_dir: Path, stem: str) -> None:
    path = fixtures_dir / "hypernetworks" / f"{stem}.pt"
    raw = load_pt(path)
    net = load_hypernetwork(path, model_widths=TINY_WIDTHS)
    assert net.sizes == TINY_WIDTHS
    assert net.name == stem
    for width in TINY_WIDTHS:
        for module, state in zip(net.pair(width), raw[width]):
            ours = module.state_dict()
            assert list(ours) == list(state)
            for key, tensor in state.items():
                assert ours[key].shape == tensor.shape
                assert torch.equal(ours[key], tensor)


def test_goldhn_b_metadata(fixtures_dir: Path) -> None:
    net = load_hypernetwork(fixtures_dir / "hypernetworks" / "goldhn_b.pt")
    assert (net.activation, net.weight_init, net.add_layer_norm) == ("swish", "KaimingNormal", True)
    assert net.dropout_structure == [0.0, 0.3, 0.3, 0.0] and net.last_layer_dropout and net.use_dropout
    assert net.step == 0 and net.sd_checkpoint is None
    trained = load_hypernetwork(fixtures_dir / "hypernetworks" / "goldhn_a.pt")
    assert (trained.step, trained.sd_checkpoint, trained.sd_checkpoint_name) == (4, "86f83915b6", "tiny-sd1")


@pytest.mark.parametrize("stem", ["goldhn_a", "goldhn_b", "goldhn_a.created-step0"])
def test_write_back_equal_in_content_and_a1111_safe(fixtures_dir: Path, tmp_path: Path, stem: str) -> None:
    source = fixtures_dir / "hypernetworks" / f"{stem}.pt"
    written = save_hypernetwork(load_hypernetwork(source), tmp_path / f"{stem}.pt")
    check_pt(written)

    original, ours = load_pt(source), load_pt(written)
    assert list(original) == list(ours)  # same keys, same order
    for key, value in original.items():
        if isinstance(key, int):
            for theirs, mine in zip(value, ours[key]):
                assert isinstance(mine, OrderedDict) and list(theirs) == list(mine)
                assert all(torch.equal(theirs[k], mine[k]) for k in theirs)
        else:
            assert ours[key] == value and type(ours[key]) is type(value)
    # Not a byte-identical file (torch 2.14 adds two zip entries A1111 refuses, and zip timestamps differ),
    # but every entry we keep is byte-identical to A1111's, the pickle included.
    theirs, mine = _zip_entries(source), _zip_entries(written)
    assert set(theirs) - set(mine) == {".format_version", ".storage_alignment"}
    assert all(theirs[name] == mine[name] for name in mine)


def _zip_entries(path: Path) -> dict[str, bytes]:
    """Entry contents keyed by name inside the archive folder (which torch names after the file stem)."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename.split("/", 1)[1]: archive.read(info) for info in archive.infolist()}


def test_loaded_modules_compute_what_the_weights_say(fixtures_dir: Path) -> None:
    net = load_hypernetwork(fixtures_dir / "hypernetworks" / "goldhn_a.pt")
    raw = load_pt(fixtures_dir / "hypernetworks" / "goldhn_a.pt")[32][1]
    x = torch.randn(1, 4, 32)
    hidden = x @ raw["linear.0.weight"].T + raw["linear.0.bias"]
    expected = x + (hidden @ raw["linear.1.weight"].T + raw["linear.1.bias"])
    _k, v = net.pair(32)
    assert torch.allclose(v(x), expected, atol=1e-6)


def test_other_family_is_refused(fixtures_dir: Path) -> None:
    with pytest.raises(FormatError, match=r"goldhn_a\.pt.*\[32, 64, 128\].*another model family"):
        load_hypernetwork(fixtures_dir / "hypernetworks" / "goldhn_a.pt", model_widths=default_sizes("sd1"))


def test_legacy_keys_and_defaults(tmp_path: Path) -> None:
    torch.manual_seed(0)
    k = {"linear1.weight": torch.randn(16, 8), "linear1.bias": torch.randn(16)}
    k |= {"linear2.weight": torch.randn(8, 16), "linear2.bias": torch.randn(8)}
    path = save_pt_a1111({8: (k, dict(k))}, tmp_path / "old_style.pt")
    net = load_hypernetwork(path)
    assert net.name == "old_style"  # no name in the file: the stem
    assert net.layer_structure == [1, 2, 1] and net.activation is None
    assert net.activate_output  # A1111's default for old files
    assert torch.equal(net.pair(8)[0].linear[1].weight, k["linear2.weight"])


def test_mismatched_weights_give_format_error(tmp_path: Path) -> None:
    net = Hypernetwork("h", [8], [1, 2, 1])
    data = load_pt(save_hypernetwork(net, tmp_path / "h.pt"))
    data["layer_structure"] = [1.0, 3.0, 1.0]
    path = save_pt_a1111(data, tmp_path / "bad.pt")
    with pytest.raises(FormatError, match=r"bad\.pt.*width 8"):
        load_hypernetwork(path)


@pytest.mark.parametrize("content", [{"step": 1}, [1, 2], {8: "not a pair"}])
def test_not_a_hypernetwork(tmp_path: Path, content: object) -> None:
    path = save_pt_a1111(content, tmp_path / "x.pt")
    with pytest.raises(FormatError, match=r"x\.pt"):
        load_hypernetwork(path)


def test_optimizer_sidecar_round_trip_and_hash_guard(tmp_path: Path) -> None:
    net = Hypernetwork("h", [8], [1, 2, 1])
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(2, 3, 8))[0].sum().backward()
    optimizer.step()
    path = save_hypernetwork(net, tmp_path / "h.pt")
    sidecar = save_hypernetwork_optimizer(path, "AdamW", optimizer.state_dict())

    assert sidecar == optimizer_path(path) == tmp_path / "h.pt.optim"
    check_pt(sidecar)
    saved = load_pt(sidecar)
    assert saved["hash"] == file_short_hash(path) and len(saved["hash"]) == 10
    name, state = load_hypernetwork_optimizer(path)
    assert name == "AdamW" and state is not None
    fresh = torch.optim.AdamW(net.parameters(), lr=1e-3)
    fresh.load_state_dict(state)

    net.step = 7  # the hypernetwork file changes: the old optimizer state no longer belongs to it
    save_hypernetwork(net, path)
    assert load_hypernetwork_optimizer(path) == ("AdamW", None)
    assert load_hypernetwork_optimizer(tmp_path / "none.pt") == ("AdamW", None)


def test_sd1_default_file_size(tmp_path: Path) -> None:
    """'1, 2, 1' on 768/320/640/1280: the ~84 MB file every A1111 user knows."""
    net = Hypernetwork("big", default_sizes("sd1"), [1, 2, 1])
    path = save_hypernetwork(net, tmp_path / "big.pt")
    size_mib = path.stat().st_size / 2**20
    assert 83 < size_mib < 85
    # per module Linear(d, 2d) + Linear(2d, d) = 4d² + 3d, a (k, v) pair per width
    assert sum(p.numel() for p in net.parameters()) == sum(
        2 * (4 * d * d + 3 * d) for d in (768, 320, 640, 1280)
    )
