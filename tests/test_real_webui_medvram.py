"""A WebUI started with --medvram, whose model is split into parts that move on demand: our jobs free it
and put it back through A1111's own functions, and its images stay the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from real_webui import Installation, copy_training_images, hn_job, make_root, running_webui, ti_job

pytestmark = [pytest.mark.real_webui, pytest.mark.slow]


def test_jobs_and_txt2img_with_medvram(installation: Installation, tmp_path: Path) -> None:
    data = copy_training_images(tmp_path / "train64")
    root = make_root(tmp_path / "root")
    with running_webui(root, installation.venv, flags=["--medvram"]) as webui:
        before = webui.txt2img("a photo", seed=3)
        webui.run_job(ti_job("medvram_ti", data, steps=3))
        webui.run_job(hn_job("medvram_hn", data, steps=3))
        np.testing.assert_array_equal(webui.txt2img("a photo", seed=3), before)
        assert webui.embeddings()["loaded"]["medvram_ti"]["step"] == 3
        assert np.abs(webui.txt2img("a photo medvram_ti", seed=3) - before).max() > 0
        assert np.abs(webui.txt2img("a photo <hypernet:medvram_hn:1>", seed=3) - before).max() > 0
