"""Runs training jobs one at a time in a background thread, and keeps a status snapshot UIs can poll.

Each job kind's runner is found in `liandan.registry`; the UI, REST routes and the CLI all go through
`run_job`, so a job behaves the same whoever started it. Errors become a status, never a crash:
a `LiandanError` keeps its message as it is (it is written for the user), anything else gets a short
message while the traceback goes to the log.

With a `journal` file, the jobs not yet finished (queued or running) are kept in it, so a server that stops
or is killed runs them again when it starts: a running job continues from its last full-state checkpoint
(the loop resumes it). A job that was running when the server stopped `MAX_RESTARTS` times is not started
again (it may be what brings the server down); it is listed as an error instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from liandan import registry
from liandan.atomic_files import write_text_atomic
from liandan.errors import LiandanError
from liandan.jobs import JobSpec, TrainSpec, job_from_dict, job_to_dict
from liandan.progress import Control, ProgressEvent, Reporter

if TYPE_CHECKING:
    from liandan.host.base import Host

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "interrupted", "error"]
FINISHED: tuple[JobState, ...] = ("done", "interrupted", "error")

_MAX_LOSSES = 20_000  # a point per step; older points are dropped past this
_MAX_MESSAGES = 50
MAX_RESTARTS = 3


def run_job(spec: JobSpec, host: Host, reporter: Reporter, control: Control) -> Any:
    """Run one job in the calling thread with the runner its kind has in the registry."""
    return registry.runner(spec.kind)(spec, host, reporter, control)


@dataclass(frozen=True)
class JobStatus:
    """A copy of one job's state at one moment: safe to hand to any thread."""

    id: str
    kind: str
    state: JobState
    step: int = 0
    total: int = 0
    loss: float | None = None
    losses: tuple[tuple[int, float], ...] = ()
    previews: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()
    messages: tuple[str, ...] = ()
    error: str = ""
    submitted: float = 0.0
    finished: float | None = None

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED

    def to_dict(self, losses_after: int | None = None) -> dict[str, Any]:
        """JSON-ready (REST); `losses_after` keeps only the losses of later steps (what a poller lacks)."""
        losses = self.losses if losses_after is None else [p for p in self.losses if p[0] > losses_after]
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "step": self.step,
            "total": self.total,
            "loss": self.loss,
            "losses": [list(p) for p in losses],
            "previews": [str(p) for p in self.previews],
            "outputs": [str(p) for p in self.outputs],
            "messages": list(self.messages),
            "error": self.error,
            "submitted": self.submitted,
            "finished": self.finished,
        }


@dataclass
class _Job:
    id: str
    spec: JobSpec
    control: Control
    state: JobState = "queued"
    step: int = 0
    total: int = 0
    loss: float | None = None
    losses: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=_MAX_LOSSES))
    previews: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    messages: deque[str] = field(default_factory=lambda: deque(maxlen=_MAX_MESSAGES))
    error: str = ""
    submitted: float = field(default_factory=time.time)
    finished: float | None = None
    saw_done: bool = False
    restarts: int = 0  # times the server stopped while this job ran (journal)

    def record(self, event: ProgressEvent) -> None:
        if event.total:
            self.total = event.total
        if event.kind in ("step", "save", "preview", "done"):
            self.step = max(self.step, event.step)
        if event.kind == "step" and event.loss is not None:
            self.loss = event.loss
            self.losses.append((event.step, event.loss))
        elif event.kind == "preview":
            self.previews.extend(event.paths)
        elif event.kind in ("save", "done"):
            self.outputs.extend(p for p in event.paths if p not in self.outputs)
        if event.kind == "done":
            self.saw_done = True
        if event.message:
            self.messages.append(event.message)

    def snapshot(self) -> JobStatus:
        return JobStatus(
            id=self.id,
            kind=self.spec.kind,
            state=self.state,
            step=self.step,
            total=self.total,
            loss=self.loss,
            losses=tuple(self.losses),
            previews=tuple(self.previews),
            outputs=tuple(self.outputs),
            messages=tuple(self.messages),
            error=self.error,
            submitted=self.submitted,
            finished=self.finished,
        )


class JobRunner:
    """A queue of jobs for one host, run one at a time by a single worker thread.

    While a job runs, `host.control` is that job's Control, so the host can bridge its own interrupt
    button (A1111's) to it; the host's reporter receives every event of the job.
    """

    def __init__(
        self,
        host: Host,
        run: Callable[[JobSpec, Host, Reporter, Control], Any] = run_job,
        journal: Path | None = None,
    ) -> None:
        self.host = host
        self._run = run
        self._jobs: dict[str, _Job] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._worker: threading.Thread | None = None
        self._journal = journal
        if journal is not None:
            self._restore(journal)

    # --- submitting and controlling -------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        """Queue a job; returns its id at once."""
        with self._lock:
            job_id = f"{spec.kind or 'job'}-{next(self._ids)}"
            self._jobs[job_id] = _Job(job_id, spec, Control())
            self._start_worker()
            self._write_journal()
        self._queue.put(job_id)
        return job_id

    def cancel(self, job_id: str) -> JobState:
        """Stop one job by id (a queued one never starts); returns the state it had. KeyError: no such job."""
        with self._lock:
            job = self._jobs[job_id]
            if job.state not in FINISHED:
                job.control.interrupt()
            return job.state

    def interrupt(self, job_id: str | None = None) -> bool:
        """Stop a job (default: the one running). A queued job is dropped before it starts."""
        with self._lock:
            job = self._find(job_id)
            if job is None or job.state in FINISHED:
                return False
            job.control.interrupt()
            return True

    def resume(self, kind: str) -> str | None:
        """Re-submit the newest finished job of `kind`, continuing from its last full-state checkpoint."""
        with self._lock:
            last = next((j for j in reversed(self._jobs.values()) if j.spec.kind == kind), None)
        if last is None or last.state not in ("interrupted", "error"):
            return None
        spec = last.spec
        train = getattr(spec, "train", None)
        if isinstance(train, TrainSpec) and not train.resume:
            spec = spec.replace(train=train.replace(resume=True))
        return self.submit(spec)

    def close(self, timeout: float | None = None) -> None:
        """Interrupt what runs, drop what waits, and stop the worker."""
        with self._lock:
            for job in self._jobs.values():
                if job.state not in FINISHED:
                    job.control.interrupt()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout)

    # --- reading ---------------------------------------------------------------------------------

    def status(self, job_id: str | None = None, kind: str | None = None) -> JobStatus | None:
        """One job's snapshot: by id, else the newest job (of `kind` if given)."""
        with self._lock:
            job = self._find(job_id, kind)
            return job.snapshot() if job else None

    def jobs(self) -> list[JobStatus]:
        with self._lock:
            return [j.snapshot() for j in self._jobs.values()]

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job has finished (or the timeout passed); returns its snapshot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status is None:
                raise KeyError(job_id)
            if status.is_finished or (deadline is not None and time.monotonic() > deadline):
                return status
            time.sleep(0.02)

    # --- the worker ------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="liandan-jobs", daemon=True)
            self._worker.start()

    # --- the journal -----------------------------------------------------------------------------

    def _write_journal(self) -> None:
        """Called with the lock held, whenever a job is added or finishes."""
        if self._journal is None:
            return
        pending = [
            {"id": j.id, "restarts": j.restarts + (j.state == "running"), "spec": job_to_dict(j.spec)}
            for j in self._jobs.values()
            if j.state not in FINISHED
        ]
        try:
            write_text_atomic(self._journal, json.dumps({"version": 1, "jobs": pending}, indent=1))
        except (OSError, LiandanError) as e:  # a full disk must not stop the queue, only its memory
            log.warning("liandan: could not save the job queue to %s: %s", self._journal, e)

    def _restore(self, journal: Path) -> None:
        """Queue again the jobs a previous server left unfinished, under their ids."""
        try:
            entries = json.loads(journal.read_text(encoding="utf-8"))["jobs"] if journal.is_file() else []
        except (OSError, ValueError, KeyError, TypeError) as e:
            kept = journal.with_name(journal.name + ".unreadable")
            with contextlib.suppress(OSError):
                journal.replace(kept)
            log.warning("liandan: job queue %s unreadable (%s); kept as %s, starting empty", journal, e, kept)
            return
        numbers = [0]
        for entry in entries:
            job_id = str(entry["id"])
            numbers.append(int(job_id.rpartition("-")[2] or 0))
            try:
                spec = job_from_dict(entry["spec"])
            except LiandanError as e:  # a job file from another version: say so, keep the others
                log.warning("liandan: job %s of the saved queue is not valid any more: %s", job_id, e)
                continue
            job = _Job(job_id, spec, Control(), restarts=int(entry.get("restarts", 0)))
            self._jobs[job_id] = job
            if job.restarts >= MAX_RESTARTS:
                job.state, job.finished = "error", time.time()
                job.error = (
                    f"not started again: the server stopped {job.restarts} times while it ran "
                    "(resume it from its tab once the cause is fixed)"
                )
                continue
            self._queue.put(job_id)
        self._ids = itertools.count(max(numbers) + 1)
        with self._lock:
            self._write_journal()
            if any(j.state == "queued" for j in self._jobs.values()):
                self._start_worker()

    def _find(self, job_id: str | None, kind: str | None = None) -> _Job | None:
        if job_id is not None:
            return self._jobs.get(job_id)
        running = [j for j in self._jobs.values() if j.state == "running" and kind in (None, j.spec.kind)]
        if running:
            return running[0]
        return next((j for j in reversed(self._jobs.values()) if kind in (None, j.spec.kind)), None)

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            job = self._jobs[job_id]
            if job.control.interrupted:  # interrupted while queued
                self._finish(job, "interrupted")
                continue
            self._run_one(job)

    def _run_one(self, job: _Job) -> None:
        def record(event: ProgressEvent) -> None:
            with self._lock:
                job.record(event)

        reporter = Reporter(record, self.host.reporter)
        self.host.control = job.control
        with self._lock:
            job.state = "running"
            self._write_journal()
        try:
            self._run(job.spec, self.host, reporter, job.control)
        except LiandanError as e:
            self._fail(job, reporter, str(e))
        except Exception as e:
            log.exception("job %s (%s) failed", job.id, job.spec.kind)
            self._fail(job, reporter, f"{type(e).__name__}: {e} (the traceback is in the console log)")
        else:
            if not job.saw_done:
                reporter(ProgressEvent("done", job=job.id, step=job.step, total=job.total))
            self._finish(job, "interrupted" if job.control.interrupted else "done")

    def _fail(self, job: _Job, reporter: Reporter, message: str) -> None:
        reporter(ProgressEvent("error", job=job.id, step=job.step, total=job.total, message=message))
        with self._lock:
            job.error = message
        self._finish(job, "error")

    def _finish(self, job: _Job, state: JobState) -> None:
        with self._lock:
            job.state = state
            job.finished = time.time()
            self._write_journal()
