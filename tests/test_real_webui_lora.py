"""LoRA in the real WebUI, the proof of the key layout: networks we trained inside it (a LoRA of the UNet
and text encoder, a LoHa with convolutions) appear in its Lora list at once (our refresh, no
/refresh-loras), `<lora:name:1>` changes a fixed-seed txt2img and `<lora:name:0>` gives the plain prompt's
image, through the WebUI's own Lora extension loading our files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from real_webui import Installation, Session, copy_training_images, make_root, running_webui
from test_real_webui_sdxl import write_tiny_sdxl

pytestmark = [pytest.mark.real_webui, pytest.mark.slow]

PROMPT = "a photo of a thing"


def lora_job(name: str, data: Any, network: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "kind": "lora",
        "name": name,
        "network": network,
        **top,
        "train": {
            "max_steps": 8,
            "save_every": 0,
            "preview_every": 0,
            "learn_rate": "0.01",
            "lr_scheduler": "constant",
        },
        "data": {"folder": str(data), "width": 64, "height": 64},
        "preview": {"steps": 2, "width": 64, "height": 64, "seed": 1, "self_test": False},
    }


@pytest.mark.parametrize(
    ("name", "network", "top"),
    [
        ("rest_lora", {"type": "lora", "rank": 4, "alpha": 4.0, "targets": "transformer"},
         {"text_encoder_lr_scale": 1.0}),
        # the WebUI's LoHa/LoKr modules compute in the file's dtype: on this full-precision model an fp16
        # file would round every weight it touches to fp16, at weight 0 too (its LoRA modules do not)
        ("rest_loha", {"type": "loha", "rank": 4, "alpha": 4.0, "conv_rank": 2}, {"save_precision": "fp32"}),
    ],
)  # fmt: skip
def test_a_trained_network_is_listed_and_changes_txt2img_at_1_not_at_0(
    session: Session, name, network, top
) -> None:
    webui = session.webui
    plain = webui.txt2img(PROMPT)
    status = webui.run_job(lora_job(name, session.data, network, **top))
    assert status["step"] == 8
    listed = {entry["name"]: entry for entry in webui.get("/sdapi/v1/loras")}
    assert name in listed, sorted(listed)
    assert listed[name]["metadata"]["ss_network_dim"] == "4"
    with_lora = webui.txt2img(f"{PROMPT} <lora:{name}:1>")
    assert np.abs(with_lora - plain).max() > 0, "the WebUI applied nothing of the LoRA"
    np.testing.assert_array_equal(webui.txt2img(f"{PROMPT} <lora:{name}:0>"), plain)
    np.testing.assert_array_equal(webui.txt2img(PROMPT), plain)  # the network is off again


def test_an_sdxl_lora_of_both_text_encoders_is_applied(installation: Installation, tmp_path: Path) -> None:
    """SDXL: kohya's LDM UNet names and lora_te1_/lora_te2_ (the OpenCLIP tower's packed attention)."""
    data = copy_training_images(tmp_path / "train64")
    root = make_root(tmp_path / "root")
    checkpoint = write_tiny_sdxl(root, installation.venv)
    with running_webui(root, installation.venv, flags=["--ckpt", str(checkpoint)]) as webui:
        # live previews would download the SDXL preview decoder (vaeapprox-sdxl.pt): no network in CI
        webui.post("/sdapi/v1/options", {"live_previews_enable": False})
        plain = webui.txt2img(PROMPT, seed=2)
        network = {"type": "lora", "rank": 4, "alpha": 4.0, "targets": "transformer"}
        webui.run_job(lora_job("sdxl_lora", data, network, text_encoder_lr_scale=1.0))
        listed = {entry["name"]: entry for entry in webui.get("/sdapi/v1/loras")}
        assert listed["sdxl_lora"]["metadata"]["ss_base_model_version"] == "sdxl_base_v1-0"
        assert np.abs(webui.txt2img(f"{PROMPT} <lora:sdxl_lora:1>", seed=2) - plain).max() > 0
        np.testing.assert_array_equal(webui.txt2img(f"{PROMPT} <lora:sdxl_lora:0>", seed=2), plain)
        # the text encoders' part alone changes the image too: the te1/te2 keys were applied
        text_only = webui.txt2img(f"{PROMPT} <lora:sdxl_lora:te=1:unet=0>", seed=2)
        assert np.abs(text_only - plain).max() > 0
