"""LoRA tools on the tiny models: merging equals applying at that weight, extracting from (base, merged)
gives a LoRA whose merge matches, resizing keeps the delta (at the same rank) or lowers the rank, the
description, the command line, and another family's LoRA refused with both families named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_lora import _randomised, _text_output, _unet_output

from liandan.cli import main
from liandan.errors import FormatError
from liandan.formats.lora import LoraFile, lora_applied, model_metadata, read_lora, write_lora
from liandan.formats.lora_tools import describe_lora, extract_lora, merge_lora, resize_lora
from liandan.jobs import NetworkSpec
from liandan.models.loading import load_bundle
from liandan.models.lora_injection import LoraNetwork
from liandan.models.saving import save_checkpoint
from liandan.models.tiny import tiny_bundle


def _lora_file(tmp_path: Path, family: str = "sd1", network_type: str = "locon") -> Path:
    bundle = tiny_bundle(family)
    network = _randomised(
        LoraNetwork(bundle, NetworkSpec(type=network_type, rank=4, conv_rank=2), text_encoders=True)
    )
    metadata = model_metadata(family, bundle.prediction_type, "x", 64, 64)
    return write_lora(
        tmp_path / f"{family}-{network_type}.safetensors", LoraFile(network.file_state(), metadata), "fp32"
    )


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return save_checkpoint(tiny_bundle("sd1"), tmp_path / "base.safetensors")


def _outputs(bundle) -> list[torch.Tensor]:
    return [_unet_output(bundle), *_text_output(bundle)]


def _assert_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("network_type", ["locon", "loha", "dora"])
def test_merge_equals_the_lora_applied_at_that_weight(tmp_path, base, network_type) -> None:
    lora_path = _lora_file(tmp_path, network_type=network_type)
    result = merge_lora(lora_path, base, tmp_path / "merged.safetensors", weight=0.7)
    assert not result.skipped and result.changed == len(read_lora(lora_path).modules())
    merged = _outputs(load_bundle(result.path))
    bundle = load_bundle(base)
    with lora_applied(bundle, read_lora(lora_path), 0.7):
        _assert_close(merged, _outputs(bundle))
    assert not torch.allclose(merged[0], _unet_output(bundle), atol=1e-3)


def test_extract_from_base_and_merged_gives_a_lora_whose_merge_matches(tmp_path, base) -> None:
    lora_path = _lora_file(tmp_path)
    merged = merge_lora(lora_path, base, tmp_path / "merged.safetensors").path
    extracted = extract_lora(
        base, merged, tmp_path / "extracted.safetensors", rank=4, conv_rank=2, precision="fp32"
    )
    lora = read_lora(extracted)
    assert lora.modules().keys() == read_lora(lora_path).modules().keys()  # every changed layer, no other
    assert lora.family == "sd1" and lora.metadata["ss_network_dim"] == "4"
    bundle = load_bundle(base)
    with lora_applied(bundle, lora, 1.0):
        _assert_close(_outputs(bundle), _outputs(load_bundle(merged)))
    with pytest.raises(Exception, match="nothing to extract"):
        extract_lora(base, base, tmp_path / "none.safetensors", rank=4)


def test_resize_keeps_the_delta_at_its_rank_and_lowers_it(tmp_path) -> None:
    lora_path = _lora_file(tmp_path, network_type="lora")
    same = read_lora(resize_lora(lora_path, tmp_path / "same.safetensors", rank=4, precision="fp32"))
    bundle = tiny_bundle("sd1")
    with lora_applied(bundle, read_lora(lora_path), 1.0):
        expected = _outputs(bundle)
    with lora_applied(bundle, same, 1.0):
        _assert_close(_outputs(bundle), expected)
    smaller = describe_lora(resize_lora(lora_path, tmp_path / "two.safetensors", rank=2))
    assert smaller["ranks"] == [2] and smaller["metadata"]["ss_network_dim"] == "2"
    with pytest.raises(FormatError, match="loha network"):
        resize_lora(_lora_file(tmp_path, network_type="loha"), tmp_path / "no.safetensors", rank=2)


def test_another_familys_lora_is_refused_with_both_named(tmp_path, base) -> None:
    with pytest.raises(FormatError, match=r"is for SDXL and the checkpoint base is SD1"):
        merge_lora(_lora_file(tmp_path, family="sdxl"), base, tmp_path / "merged.safetensors")
    assert not (tmp_path / "merged.safetensors").exists()


def test_the_command_line_runs_the_tools(tmp_path, base, capsys) -> None:
    lora_path = _lora_file(tmp_path)
    assert main(["lora", "info", str(lora_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["type"] == "lora" and info["family"] == "sd1" and info["ranks"] == [2, 4]
    assert info["metadata"]["modelspec.title"] == "x"
    out = tmp_path / "cli-merged.safetensors"
    assert main(["lora", "merge", str(lora_path), str(base), "--out", str(out), "--weight", "0.5"]) == 0
    assert out.is_file()
    assert main(["lora", "merge", str(tmp_path / "missing.safetensors"), str(base), "--out", str(out)]) == 1
    assert "not a readable LoRA" in capsys.readouterr().err
