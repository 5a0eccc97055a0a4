"""The standalone server's job queue survives a restart: a server stopped while a job trains and another
waits lists both again when it starts, resumes the first from its last saved state and then runs the second.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from browser_driver import standalone_ui
from real_webui import wait_until

REPO = Path(__file__).resolve().parents[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _finished(url: str) -> dict[str, Any] | None:
    status = _get(url)
    return status if status["state"] not in ("queued", "running") else None


@pytest.mark.slow
def test_the_queue_survives_a_server_restart(tmp_path: Path) -> None:
    training = {
        "kind": "textual_inversion",
        "name": "restart",
        "init_text": "a shape",
        "data": {"folder": str(REPO / "examples" / "images"), "width": 64, "height": 64},
        "train": {"max_steps": 30, "save_every": 5, "preview_every": 0},
        "preview": {"self_test": False},
        "save_png_cards": False,
    }
    waiting = {
        "kind": "preprocess",
        "source": str(REPO / "examples" / "images"),
        "destination": str(tmp_path / "data" / "crops"),
        "width": 32,
        "height": 32,
    }
    with standalone_ui(tmp_path) as url:
        api = f"{url}liandan/v1"
        first = _post(f"{api}/jobs", training)["id"]
        second = _post(f"{api}/jobs", waiting)["id"]
        wait_until(lambda: _get(f"{api}/jobs/{first}")["step"] >= 7, 300, "the job past its step-5 save")
        assert _get(f"{api}/jobs/{second}")["state"] == "queued"
    # the server was stopped (SIGTERM: no cleanup ran); a new one starts on the same data folder
    with standalone_ui(tmp_path) as url:
        api = f"{url}liandan/v1"
        assert [job["id"] for job in _get(f"{api}/jobs")["jobs"]] == [first, second]
        done = wait_until(lambda: _finished(f"{api}/jobs/{second}"), 300, "both jobs to finish")
        resumed = _get(f"{api}/jobs/{first}")
    assert resumed["state"] == "done" and resumed["step"] == 30
    assert any(message.startswith("resumed at step ") for message in resumed["messages"])
    assert done["state"] == "done" and len(list((tmp_path / "data" / "crops").glob("*.png"))) == 4
