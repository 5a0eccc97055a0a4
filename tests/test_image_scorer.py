"""The discriminator's image scorer: a torchvision network of a named architecture from a state dict file,
frozen, passing gradients to its input; files that do not load or hold another architecture are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from liandan.errors import ConfigError
from liandan.formats.a1111_pickle import save_pt_a1111
from liandan.models.image_scorer import load_image_scorer

# the WebUI has torchvision; the newest-stack job's CPU torch has none that imports beside it
torchvision = pytest.importorskip("torchvision", reason="the scorers are torchvision models")
pytestmark = pytest.mark.webui_env


def _state(architecture: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    network = torchvision.models.get_model(architecture, weights=None, num_classes=1)
    return {k: v.contiguous() for k, v in network.state_dict().items()}


def test_a_scorer_loads_from_safetensors_or_pt_scores_each_image_and_passes_gradients(tmp_path: Path) -> None:
    state = _state("mobilenet_v3_small")
    save_file(state, str(tmp_path / "s.safetensors"))
    save_pt_a1111(state, tmp_path / "s.pt")
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    a, b = (load_image_scorer(tmp_path / name, "mobilenet_v3_small") for name in ("s.safetensors", "s.pt"))
    scores = a(images * 2 - 1)
    assert scores.shape == (2,) and torch.equal(scores, b(images * 2 - 1))
    assert not any(p.requires_grad for p in a.parameters()) and not a.training
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_a_file_that_does_not_load_or_holds_another_architecture_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    save_file(_state("resnet18"), str(tmp_path / "resnet.safetensors"))
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    cases = {
        "missing.pt": "does not exist",
        "junk.safetensors": "does not load",
        "junk.pt": "does not load",
        "resnet.safetensors": "not a mobilenet_v3_small with a one-output head",
        "other.safetensors": "not a mobilenet_v3_small",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_image_scorer(tmp_path / name, "mobilenet_v3_small")
