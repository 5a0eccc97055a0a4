"""DreamBooth inside the real WebUI, over REST: the new checkpoint is in /sdapi/v1/sd-models without a
restart, A1111 loads it (with the .yaml the model came with) and it draws another image, and the WebUI's own
model is the one it had before, drawing the same image as before."""

from __future__ import annotations

import numpy as np
import pytest
from real_webui import Session

pytestmark = [pytest.mark.real_webui, pytest.mark.slow]


def test_the_checkpoint_is_listed_at_once_and_the_webui_model_is_restored(session: Session) -> None:
    webui = session.webui
    class_folder = webui.root / "outputs" / "liandan-rest-dreambooth-class"  # REST writes in the WebUI
    model_before = webui.get("/sdapi/v1/options")["sd_model_checkpoint"]
    before = webui.txt2img("a photo", seed=3)
    job = {
        "kind": "dreambooth",
        "name": "rw_dreambooth",
        "concepts": [
            {
                "instance_folder": str(session.data),
                "instance_prompt": "sks photo, [filewords]",
                "class_folder": str(class_folder),
                "class_prompt": "a photo",
                "num_class_images": 1,
                "class_steps": 1,
            }
        ],
        "train_text_encoder": True,
        "save_dtype": "fp32",
        "train": {
            "max_steps": 2,
            "learn_rate": "0.0005",
            "lr_scheduler": "constant",
            "save_every": 0,
            "preview_every": 0,
        },
        "data": {"width": 64, "height": 64},
        "preview": {"steps": 2, "width": 64, "height": 64, "seed": 1, "self_test": False},
    }
    webui.run_job(job)
    assert "rw_dreambooth" in {model["model_name"] for model in webui.get("/sdapi/v1/sd-models")}
    assert webui.get("/sdapi/v1/options")["sd_model_checkpoint"] == model_before
    np.testing.assert_array_equal(webui.txt2img("a photo", seed=3), before)
    trained = webui.txt2img("a photo", seed=3, override_settings={"sd_model_checkpoint": "rw_dreambooth"})
    assert np.abs(trained - before).max() > 0
    assert len(list(class_folder.glob("*.png"))) == 1
