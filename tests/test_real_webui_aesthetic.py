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
from real_webui import Session, wait_until

pytestmark = [pytest.mark.real_webui, pytest.mark.slow]

PROMPT = "a photo of a thing"
TITLE = "aesthetic gradients"  # the Script's title, lower case, as the API names it


def txt2img(session: Session, args: list[Any] | None = None) -> tuple[np.ndarray, str]:
    body: dict[str, Any] = {"prompt": PROMPT, "seed": 3, "steps": 4, "width": 64, "height": 64,
                            "cfg_scale": 7, "sampler_name": "Euler", "batch_size": 1}  # fmt: skip
    if args is not None:
        body["alwayson_scripts"] = {TITLE: {"args": args}}
    reply = session.webui.post("/sdapi/v1/txt2img", body)
    with Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return pixels, json.loads(reply["info"])["infotexts"][0]


def _routes_ready(webui):
    def ready() -> bool:
        try:
            return "aesthetic" in webui.get("/liandan/v1/kinds", timeout=10)["kinds"]
        except (OSError, AssertionError):
            return False

    return ready


def test_alwayson_aesthetic_changes_the_image_and_leaves_plain_runs_as_they_were(session: Session) -> None:
    webui = session.webui
    wait_until(_routes_ready(webui), 60, "liandan's REST routes")  # added by on_app_started, after the API
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
