"""Jobs over REST inside the real WebUI: its progress and Interrupt, resuming, txt2img during and after,
and what we wrote loading through the WebUI's own loaders."""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from real_webui import Session, WebUI, hn_job, ti_job, wait_until

pytestmark = [pytest.mark.real_webui, pytest.mark.slow]

PROMPT = "a photo of a thing"
# enough steps that the WebUI's Interrupt lands while the job runs, few enough to finish soon
STEPS = 40


def malicious_lines(console: str) -> list[str]:
    return [line for line in console.splitlines() if "may be malicious" in line or "Error verifying" in line]


def interrupt_then_resume(webui: WebUI, spec: dict[str, Any]) -> dict[str, Any]:
    """Run `spec`, press the WebUI's Interrupt after a saved step, run it again: the second run resumes from
    the first one's state and finishes. Returns the WebUI's progress seen during the first run."""
    first = webui.submit(spec)
    webui.wait_step(first, 3)
    # the WebUI's progress counts our steps (its text is mostly a save's message: saves outlast steps here)
    progress = webui.get("/sdapi/v1/progress")
    webui.post("/sdapi/v1/interrupt")
    interrupted = webui.wait_job(first)
    assert interrupted["state"] == "interrupted", interrupted
    total = spec["train"]["max_steps"]
    assert 3 <= interrupted["step"] < total
    second = webui.wait_job(webui.submit(spec))
    assert second["state"] == "done", second
    assert second["step"] == total
    resumed = [m for m in second["messages"] if re.fullmatch(r"resumed at step [1-9]\d*", m)]
    assert resumed, second["messages"]
    return progress


def test_progress_interrupt_resume_and_the_embedding_loads(session: Session) -> None:
    webui = session.webui
    plain = webui.txt2img(PROMPT)
    console_before = len(webui.console())
    progress = interrupt_then_resume(webui, ti_job("rest_ti", session.data, steps=STEPS))
    assert progress["state"]["job"] == "liandan rest_ti"
    assert progress["state"]["job_count"] == STEPS
    assert progress["state"]["job_no"] >= 3
    assert not malicious_lines(webui.console()[console_before:])
    loaded = webui.embeddings()["loaded"]
    assert loaded["rest_ti"]["step"] == STEPS
    assert loaded["rest_ti"]["vectors"] == 2
    assert np.abs(webui.txt2img(f"{PROMPT} rest_ti") - plain).max() > 0


def test_a_txt2img_during_training_waits_and_training_leaves_the_pixels_unchanged(session: Session) -> None:
    webui = session.webui
    before = webui.txt2img(PROMPT, seed=7)
    job = webui.submit(ti_job("queued_ti", session.data, steps=12))
    webui.wait_step(job, 1)
    during: dict[str, Any] = {}

    def generate() -> None:
        during["image"] = webui.txt2img(PROMPT, seed=7)
        during["job"] = webui.job(job)

    thread = threading.Thread(target=generate)
    thread.start()
    status = webui.wait_job(job)
    thread.join(timeout=300)
    assert status["state"] == "done", status
    assert during["job"]["step"] == 12, "the txt2img ran while the job held the model"
    np.testing.assert_array_equal(during["image"], before)
    np.testing.assert_array_equal(webui.txt2img(PROMPT, seed=7), before)


def test_safetensors_embedding_and_its_png_card_load_in_the_webui(session: Session) -> None:
    webui = session.webui
    plain = webui.txt2img(PROMPT)
    webui.run_job(ti_job("card_ti", session.data, steps=3, file_format="safetensors", save_png_cards=True))
    embeddings = webui.root / "embeddings"
    # A1111 reads a .safetensors embedding as bare tensors: it has no step to show
    assert webui.embeddings()["loaded"]["card_ti"]["vectors"] == 2
    with_file = webui.txt2img(f"{PROMPT} card_ti")
    assert np.abs(with_file - plain).max() > 0

    # the card alone: the .safetensors out of the folder, the PNG in; A1111 takes the name from the card's
    # data, which is that of the step it was saved at, as A1111's own cards
    shutil.move(embeddings / "card_ti.safetensors", webui.root / "card_ti.safetensors")
    cards = sorted((webui.root / "textual_inversion").glob("*/card_ti/image_embeddings/card_ti-3.png"))
    assert cards, "no PNG card written"
    shutil.copy(cards[-1], embeddings / "a_card.png")
    loaded = webui.embeddings()["loaded"]
    assert "card_ti" not in loaded
    assert loaded["card_ti-3"]["step"] == 3
    np.testing.assert_array_equal(webui.txt2img(f"{PROMPT} card_ti-3"), with_file)


def test_hypernetwork_resumes_and_its_strength_works_in_txt2img(session: Session) -> None:
    webui = session.webui
    console_before = len(webui.console())
    progress = interrupt_then_resume(webui, hn_job("rest_hn", session.data, steps=STEPS))
    assert progress["state"]["job"] == "liandan rest_hn"
    assert not malicious_lines(webui.console()[console_before:])
    names = [h["name"] for h in webui.get("/sdapi/v1/hypernetworks")]
    assert "rest_hn" in names
    plain = webui.txt2img(PROMPT)
    assert np.abs(webui.txt2img(f"{PROMPT} <hypernet:rest_hn:1>") - plain).max() > 0
    np.testing.assert_array_equal(webui.txt2img(f"{PROMPT} <hypernet:rest_hn:0>"), plain)


def test_an_apt_pair_loads_and_steers_txt2img(session: Session) -> None:
    """APT's positive in the prompt and its `-neg` in the negative prompt, through the WebUI's own loader."""
    webui = session.webui
    spec = ti_job("rest_apt", session.data, steps=4)
    spec.update(kind="apt", vectors=2, neg_vectors=3, cfg_scale="3-5:cos")
    spec.pop("init_text")
    webui.run_job(spec)
    loaded = webui.embeddings()["loaded"]
    assert (loaded["rest_apt"]["vectors"], loaded["rest_apt-neg"]["vectors"]) == (2, 3)
    assert loaded["rest_apt"]["step"] == loaded["rest_apt-neg"]["step"] == 4
    plain = webui.txt2img(PROMPT, cfg_scale=4)
    positive = webui.txt2img(f"{PROMPT} rest_apt", cfg_scale=4)
    pair = webui.txt2img(f"{PROMPT} rest_apt", cfg_scale=4, negative_prompt="rest_apt-neg")
    assert np.abs(positive - plain).max() > 0 and np.abs(pair - positive).max() > 0


def test_preprocess_job_over_rest(session: Session, tmp_path: Path) -> None:
    from PIL import Image

    destination = session.webui.root / "outputs" / "liandan-rest-preprocess"  # REST writes in the WebUI
    spec = {
        "kind": "preprocess",
        "source": str(session.data),
        "destination": str(destination),
        "width": 48,
        "height": 48,
        "resize_mode": "crop",
        "flip": "horizontal",
    }
    session.webui.run_job(spec, timeout=120)
    outputs = sorted(destination.glob("*.png"))
    assert len(outputs) == 8  # 4 images and their flipped copies
    for path in outputs:
        with Image.open(path) as image:
            assert image.size == (48, 48)


def test_a_preprocess_job_shows_in_the_webui_progress_and_its_interrupt_stops_it(
    session: Session, tmp_path: Path
) -> None:
    import os

    from PIL import Image

    count = 300
    source = tmp_path / "many"
    source.mkdir()
    # one large noisy picture (slow to decode), linked under many names: seconds of work, made at once
    noise = np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "large.png")
    for index in range(count):
        os.link(tmp_path / "large.png", source / f"p{index:03}.png")
    destination = session.webui.root / "outputs" / "liandan-rest-interrupted"
    spec = {"kind": "preprocess", "source": str(source), "destination": str(destination),
            "width": 64, "height": 64}  # fmt: skip
    webui = session.webui
    job = webui.submit(spec)
    webui.wait_step(job, 3)
    progress = webui.get("/sdapi/v1/progress")
    webui.post("/sdapi/v1/interrupt")
    status = webui.wait_job(job)
    assert progress["state"]["job"] == "liandan preprocess" and progress["state"]["job_count"] == count
    assert status["state"] == "interrupted" and 3 <= status["step"] < count, status


def test_a_bad_job_is_refused_with_the_reason(session: Session) -> None:
    with pytest.raises(AssertionError, match="HTTP 422"):
        session.webui.submit({"kind": "textual_inversion", "name": "x", "vectors": 0})
    wait_until(lambda: session.webui.get("/sdapi/v1/progress")["state"]["job_count"] == 0, 30, "idle")
