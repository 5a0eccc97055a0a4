from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from liandan import registry
from liandan.errors import ConfigError, DatasetError
from liandan.job_runner import MAX_RESTARTS, JobRunner, run_job
from liandan.jobs import JobSpec, TrainSpec
from liandan.progress import Control, ProgressEvent, Reporter


@dataclass(frozen=True)
class FakeJob(JobSpec):
    kind: ClassVar[str] = "fake_job"
    steps: int = 3
    fail: str = ""  # "", "liandan", "bug"
    train: TrainSpec = field(default_factory=TrainSpec)


class FakeHost:
    name = "fake"

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.reporter = Reporter(self.events.append)
        self.control = Control()


def fake_runner(spec: FakeJob, host, reporter: Reporter, control: Control) -> None:
    reporter(ProgressEvent("start", job="t", total=spec.steps))
    for step in range(1, spec.steps + 1):
        if control.interrupted:
            reporter(ProgressEvent("message", message="interrupted"))
            return
        reporter(ProgressEvent("step", step=step, total=spec.steps, loss=1.0 / step))
        if step == 2:
            reporter(ProgressEvent("preview", step=step, paths=(Path("p2.png"),)))
        if spec.fail == "liandan" and step == 2:
            raise DatasetError("folder /x has no images")
        if spec.fail == "bug" and step == 2:
            raise ZeroDivisionError("division by zero")
    reporter(ProgressEvent("done", step=spec.steps, total=spec.steps, paths=(Path("out.pt"),)))


@pytest.fixture(autouse=True)
def _fake_kind():
    registry.register(registry.Method(FakeJob, fake_runner, "Fake"))
    yield
    registry.unregister(FakeJob.kind)


def test_job_runs_to_done_with_history_previews_and_outputs() -> None:
    host = FakeHost()
    runner = JobRunner(host)
    status = runner.wait(runner.submit(FakeJob()), timeout=10)
    assert status.state == "done"
    assert (status.step, status.total) == (3, 3)
    assert status.losses == ((1, 1.0), (2, 0.5), (3, 1 / 3))
    assert status.previews == (Path("p2.png"),)
    assert status.outputs == (Path("out.pt"),)
    # the host's reporter saw the same events (A1111's progress mirror hangs there)
    assert [e.kind for e in host.events] == ["start", "step", "step", "preview", "step", "done"]
    runner.close(timeout=5)


def test_liandan_error_becomes_a_clean_error_status() -> None:
    host = FakeHost()
    runner = JobRunner(host)
    status = runner.wait(runner.submit(FakeJob(fail="liandan")), timeout=10)
    assert status.state == "error"
    assert status.error == "folder /x has no images"
    assert host.events[-1].kind == "error"
    runner.close(timeout=5)


def test_unexpected_exception_gives_short_message_and_logs_traceback(caplog) -> None:
    runner = JobRunner(FakeHost())
    status = runner.wait(runner.submit(FakeJob(fail="bug")), timeout=10)
    assert status.state == "error"
    assert status.error.startswith("ZeroDivisionError: division by zero")
    assert "Traceback" not in status.error
    assert any(r.exc_info for r in caplog.records), "the traceback must reach the log"
    # the worker survives: the next job still runs
    assert runner.wait(runner.submit(FakeJob()), timeout=10).state == "done"
    runner.close(timeout=5)


def test_jobs_run_one_at_a_time_and_the_host_control_stops_the_running_one() -> None:
    gate = threading.Event()
    started = threading.Event()
    running_now = []

    def slow(spec, host, reporter, control):
        running_now.append(spec)
        assert len(running_now) == 1, "two jobs ran at once"
        started.set()
        gate.wait(5)
        while not control.interrupted and spec.steps == 99:
            gate.wait(0.01)
        running_now.pop()

    host = FakeHost()
    runner = JobRunner(host, run=slow)
    first = runner.submit(FakeJob(steps=99))
    second = runner.submit(FakeJob(steps=1))
    assert started.wait(5)
    assert runner.status(second).state == "queued"
    assert runner.status().id == first  # the running job is "the" job
    host.control.interrupt()  # what WebUIHost does when A1111's Interrupt is pressed
    gate.set()
    assert runner.wait(first, timeout=10).state == "interrupted"
    assert runner.wait(second, timeout=10).state == "done"
    runner.close(timeout=5)


def test_interrupting_a_queued_job_drops_it_before_it_starts() -> None:
    gate = threading.Event()
    calls = []

    def blocking(spec, host, reporter, control):
        calls.append(spec.steps)
        gate.wait(5)

    runner = JobRunner(FakeHost(), run=blocking)
    runner.submit(FakeJob(steps=1))
    queued = runner.submit(FakeJob(steps=2))
    assert runner.interrupt(queued)
    gate.set()
    assert runner.wait(queued, timeout=10).state == "interrupted"
    assert calls == [1]
    runner.close(timeout=5)


def test_resume_resubmits_the_interrupted_job_with_resume_on() -> None:
    seen: list[FakeJob] = []

    def record(spec, host, reporter, control):
        seen.append(spec)
        if len(seen) == 1:
            control.interrupt()

    runner = JobRunner(FakeHost(), run=record)
    first = runner.submit(FakeJob(train=TrainSpec(resume=False)))
    assert runner.wait(first, timeout=10).state == "interrupted"
    second = runner.resume("fake_job")
    assert second is not None and runner.wait(second, timeout=10).state == "done"
    assert seen[1].train.resume is True
    assert runner.resume("fake_job") is None  # nothing to resume after a finished run
    runner.close(timeout=5)


def test_run_job_names_the_known_kinds_when_one_is_missing() -> None:
    @dataclass(frozen=True)
    class Unknown(JobSpec):
        kind: ClassVar[str] = "no_such_method"

    with pytest.raises(ConfigError, match=r"job kind 'no_such_method' is unknown.*fake_job"):
        run_job(Unknown(), FakeHost(), Reporter(), Control())


def test_status_to_dict_is_json_ready() -> None:
    import json

    runner = JobRunner(FakeHost())
    status = runner.wait(runner.submit(FakeJob()), timeout=10)
    data = json.loads(json.dumps(status.to_dict()))
    assert data["state"] == "done" and data["outputs"] == ["out.pt"] and data["losses"][0] == [1, 1.0]
    runner.close(timeout=5)


# --- the journal: a server that stops runs its unfinished jobs again at its next start ----------------


def _hold_until(gate: threading.Event, ran: list[int]):
    def run(spec, host, reporter, control):
        ran.append(spec.steps)
        while not gate.wait(0.01) and not control.interrupted:
            pass

    return run


def test_unfinished_jobs_run_again_under_their_ids_after_a_restart(tmp_path: Path) -> None:
    journal = tmp_path / "queue.json"
    stuck, before = threading.Event(), []
    stopped = JobRunner(FakeHost(), run=_hold_until(stuck, before), journal=journal)
    running = stopped.submit(FakeJob(steps=1))
    queued = stopped.submit(FakeJob(steps=2))
    while stopped.status(running).state != "running":
        time.sleep(0.01)

    # the first server is gone (its worker stays stuck); a new one starts from the same journal
    after: list[int] = []
    restarted = JobRunner(FakeHost(), run=_hold_until(threading.Event(), after), journal=journal)
    assert [j.id for j in restarted.jobs()] == [running, queued]
    restarted.cancel(running)
    restarted.cancel(queued)
    assert restarted.wait(queued, timeout=10).state == "interrupted"
    assert after == [1] and before == [1]
    assert json.loads(journal.read_text())["jobs"] == []  # nothing left to run
    assert restarted.submit(FakeJob()) == "fake_job-3"  # new ids continue after the restored ones
    restarted.close(timeout=5)
    stuck.set()
    stopped.close(timeout=5)  # the stuck worker ends while its folder is still there


def test_a_job_that_was_running_at_every_stop_is_not_started_again(tmp_path: Path) -> None:
    journal = tmp_path / "queue.json"
    gates, stopped = [], []
    for _ in range(MAX_RESTARTS):
        gates.append(threading.Event())
        runner = JobRunner(FakeHost(), run=_hold_until(gates[-1], []), journal=journal)
        stopped.append(runner)
        if not runner.jobs():
            runner.submit(FakeJob())
        while runner.jobs()[0].state != "running":
            time.sleep(0.01)
    ran: list[int] = []
    last = JobRunner(FakeHost(), run=_hold_until(threading.Event(), ran), journal=journal)
    status = last.jobs()[0]
    assert status.state == "error" and f"stopped {MAX_RESTARTS} times" in status.error
    assert ran == [] and json.loads(journal.read_text())["jobs"] == []
    for gate in gates:
        gate.set()
    last.close(timeout=5)
    for runner in stopped:  # their workers end while the folder is still there
        runner.close(timeout=5)


def test_an_unreadable_journal_is_kept_aside_and_the_queue_starts_empty(tmp_path: Path) -> None:
    journal = tmp_path / "queue.json"
    journal.write_text("{not json")
    runner = JobRunner(FakeHost(), journal=journal)
    assert runner.jobs() == []
    assert (tmp_path / "queue.json.unreadable").read_text() == "{not json"
    runner.close(timeout=5)


def test_a_journal_that_cannot_be_written_does_not_stop_the_queue(tmp_path: Path, caplog) -> None:
    journal = tmp_path / "gone" / "queue.json"
    runner = JobRunner(FakeHost(), journal=journal)
    journal.unlink()
    journal.parent.rmdir()
    (tmp_path / "gone").write_text("a file where the folder should be")
    status = runner.wait(runner.submit(FakeJob()), timeout=10)
    assert status.state == "done"
    assert "could not save the job queue" in caplog.text
    runner.close(timeout=5)
