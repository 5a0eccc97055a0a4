"""The REST contract (liandan/rest.py): the routes, their errors, auth, the schema, and no 500 on any body."""

from __future__ import annotations

import dataclasses
import json
import threading
import typing
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liandan import jobs, registry
from liandan.host.standalone import standalone_folders
from liandan.job_runner import JobRunner
from liandan.progress import Control, ProgressEvent, Reporter
from liandan.rest import PREFIX, basic_auth, build_router, token_auth

DATA = Path("/tmp/liandan-rest-test-data")  # never created: the routes only compare paths with it


class FakeHost:
    name = "fake"

    def __init__(self) -> None:
        self.reporter = Reporter(lambda event: None)
        self.control = Control()
        self.folders = standalone_folders(DATA)


class Gate:
    """A job run function that records what it ran and holds each job until released."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.release = threading.Event()

    def __call__(self, spec: Any, host: Any, reporter: Reporter, control: Control) -> None:
        self.ran.append(spec.kind)
        while not self.release.wait(0.01):
            if control.interrupted:
                return


def client_for(runner: JobRunner, dependencies: list[Any] | None = None) -> TestClient:
    app = FastAPI()
    app.include_router(build_router(lambda: runner, dependencies or []))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def runner(gate: Gate):
    runner = JobRunner(FakeHost(), run=gate)
    yield runner
    gate.release.set()
    runner.close(timeout=10)


PREPROCESS = {"kind": "preprocess", "source": "/pictures/in", "destination": str(DATA / "outputs" / "crops")}


def test_jobs_are_queued_listed_cancelled_and_finished_jobs_refuse_a_cancel(runner, gate) -> None:
    client = client_for(runner)
    assert client.get(f"{PREFIX}/kinds").json()["kinds"] == registry.kinds()
    first = client.post(f"{PREFIX}/jobs", json=PREPROCESS).json()["id"]
    second = client.post(f"{PREFIX}/jobs", json=PREPROCESS).json()["id"]
    assert [j["id"] for j in client.get(f"{PREFIX}/jobs").json()["jobs"]] == [first, second]
    assert client.get(f"{PREFIX}/jobs/{second}").json()["state"] == "queued"

    cancelled = client.post(f"{PREFIX}/jobs/{second}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    gate.release.set()
    assert runner.wait(second, timeout=10).state == "interrupted"
    assert runner.wait(first, timeout=10).state == "done"
    assert gate.ran == ["preprocess"]  # the cancelled job never started

    again = client.post(f"{PREFIX}/jobs/{first}/cancel")
    assert again.status_code == 409 and "already finished (done)" in again.json()["detail"]
    for route in (f"{PREFIX}/jobs/nope", f"{PREFIX}/jobs/nope/cancel"):
        response = client.post(route) if route.endswith("cancel") else client.get(route)
        assert response.status_code == 404 and "no job 'nope'" in response.json()["detail"]


def test_since_returns_only_the_losses_a_poller_has_not_seen() -> None:
    release = threading.Event()

    def train_five_steps(spec: Any, host: Any, reporter: Reporter, control: Control) -> None:
        for step in range(1, 6):
            reporter(ProgressEvent("step", step=step, total=5, loss=1.0 / step))
        release.wait(10)

    runner = JobRunner(FakeHost(), run=train_five_steps)
    try:
        client = client_for(runner)
        job = client.post(f"{PREFIX}/jobs", json=PREPROCESS).json()["id"]
        for _ in range(500):
            if client.get(f"{PREFIX}/jobs/{job}").json()["step"] == 5:
                break
            threading.Event().wait(0.01)
        everything = client.get(f"{PREFIX}/jobs/{job}").json()
        assert [step for step, _ in everything["losses"]] == [1, 2, 3, 4, 5]
        assert client.get(f"{PREFIX}/jobs/{job}?since=3").json()["losses"] == [[4, 0.25], [5, 0.2]]
        assert client.get(f"{PREFIX}/jobs?since=5").json()["jobs"][0]["losses"] == []
        assert client.get(f"{PREFIX}/jobs/{job}?since=-1").status_code == 422
    finally:
        release.set()
        runner.close(timeout=10)


def test_an_invalid_spec_is_a_422_with_the_reason(runner) -> None:
    client = client_for(runner)
    response = client.post(f"{PREFIX}/jobs", json={"kind": "preprocess", "sorce": "in"})
    assert response.status_code == 422 and "source" in response.json()["detail"]  # the nearest valid key
    assert client.post(f"{PREFIX}/jobs", json=[1, 2]).status_code == 422  # not an object
    assert client.post(f"{PREFIX}/jobs", content=b"{not json").status_code == 422
    assert runner.jobs() == []


def test_the_schema_lists_every_route() -> None:
    app = FastAPI()
    app.include_router(build_router(lambda: None, []))  # type: ignore[arg-type, return-value]
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    assert set(paths) == {
        f"{PREFIX}/kinds",
        f"{PREFIX}/jobs",
        f"{PREFIX}/jobs/{{job_id}}",
        f"{PREFIX}/jobs/{{job_id}}/cancel",
        f"{PREFIX}/interrupt",
    }
    assert "404" in paths[f"{PREFIX}/jobs/{{job_id}}/cancel"]["post"]["responses"]


@pytest.mark.parametrize(
    ("dependencies", "good", "bad"),
    [
        (basic_auth("ann:s3cret,bob:pw"), ("ann", "s3cret"), ("ann", "pw")),
        (token_auth("t0ken"), {"Authorization": "Bearer t0ken"}, {"Authorization": "Bearer nope"}),
    ],
    ids=["api-auth", "token"],
)
def test_routes_need_the_credentials(runner, dependencies, good, bad) -> None:
    client = client_for(runner, dependencies)
    as_kwargs = (lambda c: {"auth": c}) if isinstance(good, tuple) else (lambda c: {"headers": c})
    for route in ("kinds", "jobs", "jobs/x"):
        assert client.get(f"{PREFIX}/{route}").status_code == 401
        assert client.get(f"{PREFIX}/{route}", **as_kwargs(bad)).status_code == 401
    assert client.post(f"{PREFIX}/jobs", json=PREPROCESS, **as_kwargs(bad)).status_code == 401
    assert runner.jobs() == []
    assert client.get(f"{PREFIX}/kinds", **as_kwargs(good)).status_code == 200


def test_a_rest_job_writes_only_inside_the_hosts_folders(runner, tmp_path) -> None:
    client = client_for(runner)
    for outside in ("/etc/liandan", "../../outside", str(DATA / ".." / "elsewhere")):
        for body in ({**PREPROCESS, "destination": outside}, {**PREPROCESS, "log_dir": outside}):
            response = client.post(f"{PREFIX}/jobs", json=body)
            assert response.status_code == 403 and "outside the folders" in response.json()["detail"]
    in_place = {**PREPROCESS, "in_place_captions": True, "destination": "/pictures/in"}
    assert client.post(f"{PREFIX}/jobs", json=in_place).status_code == 403  # captions beside the source
    assert runner.jobs() == []
    assert (
        client.post(f"{PREFIX}/jobs", json={**PREPROCESS, "log_dir": str(DATA / "logs")}).status_code == 200
    )


def test_a_symlink_out_of_the_data_folder_does_not_open_a_way_out(tmp_path) -> None:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "exit").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    host = FakeHost()
    host.folders = standalone_folders(data)
    runner = JobRunner(host, run=lambda *args: None)
    client = client_for(runner)
    through_link = {**PREPROCESS, "destination": str(data / "exit" / "crops")}
    assert client.post(f"{PREFIX}/jobs", json=through_link).status_code == 403
    assert (
        client.post(f"{PREFIX}/jobs", json={**through_link, "destination": str(data / "crops")}).status_code
        == 200
    )
    runner.close(timeout=10)


# --- no body is a 500 -------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _section_keys(hint: Any) -> list[str] | None:
    """The keys of the spec section a field holds (`TrainSpec`, `ValidationSpec | None`,
    `tuple[DataSpec, ...]`), None for a plain value."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and issubclass(candidate, jobs.Spec):
            return [f.name for f in dataclasses.fields(candidate)]
    return None


def _spec_like(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies shaped like a `kind` job: its real keys (and those of its sections) with any JSON values."""
    fields = {}
    for name, hint in typing.get_type_hints(registry.method(kind).spec).items():
        keys = _section_keys(hint)
        if name == "kind":
            continue
        if keys is None:
            fields[name] = JSON
        else:
            section = st.dictionaries(st.sampled_from(keys), JSON, max_size=4)
            fields[name] = section | st.lists(section, max_size=2) | JSON
    return st.fixed_dictionaries({"kind": st.just(kind)}, optional=fields)


BODIES = JSON | st.sampled_from(registry.kinds()).flatmap(_spec_like)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_no_body_makes_a_server_error(body: Any) -> None:
    runner = JobRunner(FakeHost(), run=lambda *args: None)
    try:
        response = client_for(runner).post(f"{PREFIX}/jobs", content=json.dumps(body))
        assert response.status_code in (200, 403, 422), (response.status_code, response.text)
        assert isinstance(response.json().get("detail", response.json().get("id")), (str, list))
    finally:
        runner.close(timeout=10)


def test_the_fuzzer_knows_the_sections_of_a_job() -> None:
    hints = typing.get_type_hints(jobs.TextualInversionJob)
    sections = {name for name, hint in hints.items() if _section_keys(hint) is not None}
    assert sections == {"train", "data", "extra_data", "validation", "preview"}
    assert "learn_rate" in _section_keys(hints["train"])


# --- the standalone server --------------------------------------------------------------------------


def test_the_standalone_server_serves_the_routes_and_needs_its_token_when_listening(tmp_path) -> None:
    from liandan.host.standalone import StandaloneHost
    from liandan.ui.app import build_app, serve

    host = StandaloneHost(tmp_path)
    runner = JobRunner(host)
    app = build_app(host, runner)
    port = _free_port()
    serve(app, runner, port=port, token="t0ken", block=False)
    try:
        url = f"http://127.0.0.1:{port}{PREFIX}/kinds"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": "Bearer t0ken"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["kinds"] == registry.kinds()
        with pytest.raises(urllib.error.HTTPError) as login:  # the UI's config is behind gradio's login
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10)
        assert login.value.code == 401
    finally:
        app.close()
        runner.close(timeout=10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submissions_at_the_same_moment_get_their_own_ids_and_run_one_at_a_time(tmp_path) -> None:
    """Twenty clients post at once: each job gets its own id, the journal stays readable, and the jobs run
    one after another (never two writing at once)."""
    import json as json_module

    running, overlaps = [], []

    def one_at_a_time(spec, host, reporter, control) -> None:
        running.append(1)
        if len(running) > 1:
            overlaps.append(len(running))
        running.pop()

    journal = tmp_path / "queue.json"
    runner = JobRunner(FakeHost(), run=one_at_a_time, journal=journal)
    client = client_for(runner)
    start = threading.Barrier(20)
    ids: list[str] = []

    def submit() -> None:
        start.wait()
        ids.append(client.post(f"{PREFIX}/jobs", json=PREPROCESS).json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(set(ids)) == 20
    for job_id in ids:
        assert runner.wait(job_id, timeout=30).state == "done"
    assert overlaps == [] and json_module.loads(journal.read_text())["jobs"] == []
    runner.close(timeout=10)
