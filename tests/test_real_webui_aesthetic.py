"""Aesthetic gradients inside the real WebUI: an embedding made over REST, then txt2img over the WebUI's API
with `alwayson_scripts` changes the image and writes our infotext; weight 0 and the runs afterwards equal a
plain generation (the WebUI's conditioning cache does not leak either way)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image
from real_webui import (
    Installation,
    Session,
    WebUI,
    copy_training_images,
    make_root,
    running_webui,
)
from test_real_webui_sdxl import write_tiny_sdxl

pytestmark = [pytest.mark.real_webui, pytest.mark.slow]

PROMPT = "a photo of a thing"
TITLE = "aesthetic gradients"  # the Script's title, lower case, as the API names it


def txt2img(session: Session | WebUI, args: list[Any] | None = None) -> tuple[np.ndarray, str]:
    body: dict[str, Any] = {"prompt": PROMPT, "seed": 3, "steps": 4, "width": 64, "height": 64,
                            "cfg_scale": 7, "sampler_name": "Euler", "batch_size": 1}  # fmt: skip
    if args is not None:
        body["alwayson_scripts"] = {TITLE: {"args": args}}
    webui = session.webui if isinstance(session, Session) else session
    reply = webui.post("/sdapi/v1/txt2img", body)
    with Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return pixels, json.loads(reply["info"])["infotexts"][0]


def test_alwayson_aesthetic_changes_the_image_and_leaves_plain_runs_as_they_were(session: Session) -> None:
    webui = session.webui
    status = webui.run_job({"kind": "aesthetic", "name": "rw_look", "folder": str(session.data)})
    assert any(path.endswith("rw_look.pt") for path in status["outputs"]), status
    scripts = webui.get("/sdapi/v1/scripts")
    assert TITLE in scripts["txt2img"] and TITLE in scripts["img2img"]

    before, before_info = txt2img(session)
    steered, info = txt2img(session, ["rw_look", 0.9, 5, 0.005, False, 0.1, "", False])
    assert np.abs(steered - before).max() > 0
    for field in ("Aesthetic embedding: rw_look", "Aesthetic weight: 0.9", "Aesthetic steps: 5",
                  "Aesthetic LR: 0.005", "Aesthetic slerp: False"):  # fmt: skip
        assert field in info, info
    zero, zero_info = txt2img(session, ["rw_look", 0.0, 5, 0.005, False, 0.1, "", False])
    np.testing.assert_array_equal(zero, before)
    assert "Aesthetic" not in zero_info
    after, after_info = txt2img(session)
    np.testing.assert_array_equal(after, before)
    assert after_info == before_info
    # the same settings again: the same image (the adapted prompt comes from our cache)
    np.testing.assert_array_equal(
        txt2img(session, ["rw_look", 0.9, 5, 0.005, False, 0.1, "", False])[0], steered
    )


def test_sdxl_steers_both_text_encoders_and_the_pooled_output(installation: Installation, tmp_path) -> None:
    """The tiny SDXL model in the real WebUI (test_real_webui_sdxl.py): an embedding with a feature per
    tower, and a txt2img with it differs from plain while weight 0 and a plain run afterwards do not."""
    data = copy_training_images(tmp_path / "train64")
    root = make_root(tmp_path / "root")
    checkpoint = write_tiny_sdxl(root, installation.venv)
    with running_webui(root, installation.venv, flags=["--ckpt", str(checkpoint)]) as webui:
        webui.post("/sdapi/v1/options", {"live_previews_enable": False})  # no SDXL preview decoder offline
        status = webui.run_job(
            {"kind": "aesthetic", "name": "xl_look", "folder": str(data), "file_format": "pt"}
        )
        assert any(path.endswith("xl_look.pt") for path in status["outputs"]), status
        args = ["xl_look", 0.9, 5, 0.005, True, 0.1, "", False]  # with slerp this time
        before, _ = txt2img(webui)
        steered, info = txt2img(webui, args)
        assert np.abs(steered - before).max() > 0 and "Aesthetic slerp: True" in info
        np.testing.assert_array_equal(txt2img(webui, ["xl_look", 0.0, *args[2:]])[0], before)
        np.testing.assert_array_equal(txt2img(webui)[0], before)
