"""An SDXL model in the real WebUI, small enough for CI, and an SDXL embedding ({clip_l, clip_g}) there.

A1111 builds an SDXL model from the .yaml beside the checkpoint. Ours names its text towers as A1111's
sd_xl_base.yaml does but smaller: the CLIP-L tower is a local transformers folder (the yaml's `version`,
relative to the WebUI root, as the SD1 fixture's tiny-clip), and the OpenCLIP-G tower is an open_clip model
config of the tiny model's size, placed in the test venv's open_clip `model_configs` folder (open_clip reads
every JSON there at import). That config is test data in the test environment; A1111 is not changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from open_clip_config import open_clip_config
from real_webui import Installation, Venv, copy_training_images, make_root, running_webui, ti_job

from liandan.models.tiny import tiny_bundle, tiny_spec

pytestmark = [pytest.mark.real_webui, pytest.mark.slow]

OPEN_CLIP_ARCH = "liandan-tiny-bigG"
CLIP_L_FOLDER = "models/tiny-sdxl-clip-l"  # relative to the WebUI root


def _install_open_clip_config(venv: Venv, clip_g: dict) -> None:
    configs = list(venv.path.glob("lib/python3*/site-packages/open_clip/model_configs"))
    assert len(configs) == 1, f"open_clip's model_configs folder not found in {venv.path}: {configs}"
    config = json.dumps(open_clip_config(clip_g), indent=2)
    (configs[0] / f"{OPEN_CLIP_ARCH}.json").write_text(config, encoding="utf-8")


def write_tiny_sdxl(root: Path, venv: Venv) -> Path:
    """liandan's tiny SDXL checkpoint and .yaml (saving.save_checkpoint) in the WebUI's models folder, its
    text towers where the yaml says. Returns the checkpoint."""
    from liandan.models.saving import save_checkpoint
    from liandan.models.tokenizer import write_tokenizer_files

    path = root / "models" / "Stable-diffusion" / "tiny-sdxl.safetensors"
    save_checkpoint(tiny_bundle("sdxl"), path)
    clip_l, clip_g = (encoder.config for encoder in tiny_spec("sdxl").text_encoders)
    folder = root / CLIP_L_FOLDER
    write_tokenizer_files(folder)
    config = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **clip_l}
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    _install_open_clip_config(venv, clip_g)

    # only the text towers' names change in the .yaml liandan wrote
    config_path = path.with_suffix(".yaml")
    model = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    clip_l_embedder, clip_g_embedder = model["model"]["params"]["conditioner_config"]["params"]["emb_models"][
        :2
    ]
    clip_l_embedder["params"]["version"] = CLIP_L_FOLDER
    clip_g_embedder["params"]["arch"] = OPEN_CLIP_ARCH
    config_path.write_text(yaml.safe_dump(model, sort_keys=False), encoding="utf-8")
    return path


def test_an_sdxl_embedding_loads_and_changes_the_image(installation: Installation, tmp_path: Path) -> None:
    data = copy_training_images(tmp_path / "train64")
    root = make_root(tmp_path / "root")
    checkpoint = write_tiny_sdxl(root, installation.venv)
    with running_webui(root, installation.venv, flags=["--ckpt", str(checkpoint)]) as webui:
        assert "Stable diffusion model failed to load" not in webui.console(), webui.console()[-4000:]
        assert "tiny-sdxl" in webui.get("/sdapi/v1/options")["sd_model_checkpoint"]
        # live previews would download the SDXL preview decoder (vaeapprox-sdxl.pt): no network in CI
        webui.post("/sdapi/v1/options", {"live_previews_enable": False})
        plain = webui.txt2img("a photo", seed=2)
        status = webui.run_job(ti_job("sdxl_ti", data, steps=3))
        assert any(path.endswith("sdxl_ti.safetensors") for path in status["outputs"]), status["outputs"]
        loaded = webui.embeddings()["loaded"]
        assert loaded["sdxl_ti"]["vectors"] == 2
        assert loaded["sdxl_ti"]["shape"] == 64 + 128  # clip_l + clip_g widths
        assert np.abs(webui.txt2img("a photo sdxl_ti", seed=2) - plain).max() > 0
        np.testing.assert_array_equal(webui.txt2img("a photo", seed=2), plain)
