"""Known harmless dependency messages are dropped; everything else from the same logger still shows."""

from __future__ import annotations

import logging
import runpy
import sys
from pathlib import Path

import pytest

from liandan.dependency_noise import HARMLESS, quiet_dependency_noise

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_only_the_known_message_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    quiet_dependency_noise()
    quiet_dependency_noise()  # idempotent: the CLI and preload.py may both call it
    logger_name, prefix = HARMLESS[0]
    logger = logging.getLogger(logger_name)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=logger_name):
        logger.warning(prefix + ": %s. Please make sure you already `pip install kernels`", "offline")
        logger.warning("CUDA kernel failed to load: real trouble")
    assert [r.getMessage() for r in caplog.records] == ["CUDA kernel failed to load: real trouble"]


def test_preload_installs_it_the_way_a1111_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A1111 loads preload.py by path and calls preload(parser) before the WebUI imports accelerate."""
    logger = logging.getLogger(HARMLESS[0][0])
    monkeypatch.setattr(logger, "filters", [])
    path_before = list(sys.path)
    module = runpy.run_path(str(REPO_ROOT / "preload.py"))
    module["preload"](None)
    assert len(logger.filters) == 1
    assert sys.path == path_before
