"""The REST routes, `/liandan/v1/...`: the same in the WebUI (with `--api`) and in the standalone server.

    GET  /liandan/v1/kinds               the job kinds
    GET  /liandan/v1/jobs                every job's status
    GET  /liandan/v1/jobs/{id}           one job's status (404: no such job)
                                         (`?since=N`: only the losses of steps after N)
    POST /liandan/v1/jobs                a job spec as JSON, the same keys as a job file -> {"id": ...}
                                         (422 with the reason when the spec is not valid, 403 when it
                                         would write outside the host's folders)
    POST /liandan/v1/jobs/{id}/cancel    stop a queued or running job (404: unknown, 409: already finished)
    POST /liandan/v1/interrupt           stop the running job, if any

FastAPI serves the schema at /openapi.json. The routes read and write any folder the host knows, so they
are guarded like the WebUI's own API: Basic credentials from `--api-auth` inside the WebUI, a bearer token
for a standalone server that listens beyond 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from secrets import compare_digest
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from liandan import registry
from liandan.errors import LiandanError
from liandan.job_runner import FINISHED
from liandan.jobs import JobSpec, job_from_dict

if TYPE_CHECKING:
    from liandan.host.base import Folders
    from liandan.job_runner import JobRunner

PREFIX = "/liandan/v1"
# A poller that has the losses up to step N asks `?since=N` for the rest (the history holds up to 20,000).
SINCE = Query(None, ge=0, description="only the losses of steps after this one")


def basic_auth(credentials_text: str | None) -> list[Any]:
    """Dependencies checking A1111's `--api-auth` ("user:password,user2:password2"); none without it."""
    if not credentials_text:
        return []
    allowed = dict(entry.split(":", 1) for entry in credentials_text.split(",") if ":" in entry)

    def check(credentials: HTTPBasicCredentials = Depends(HTTPBasic())) -> None:  # noqa: B008 - FastAPI's idiom
        password = allowed.get(credentials.username)
        if password is None or not compare_digest(credentials.password, password):
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})  # fmt: skip

    return [Depends(check)]


def token_auth(token: str | None) -> list[Any]:
    """Dependencies requiring `Authorization: Bearer <token>`; none without a token."""
    if not token:
        return []

    bearer = HTTPBearer(auto_error=False)

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if credentials is None or not compare_digest(credentials.credentials, token):
            raise HTTPException(
                status_code=401,
                detail="a valid 'Authorization: Bearer <token>' header is needed",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return [Depends(check)]


def folders_outside(job: JobSpec, folders: Folders) -> str:
    """Why `job` may not run over REST, "" when it may: every folder it writes into must lie inside the
    host's data folder or one of its artifact folders, symlinks followed (a caller of the API is not the
    person at the machine)."""
    roots = [p.resolve() for p in (folders.models.parent, *folders.all())]
    for folder in job.written_folders():
        resolved = Path(folder).expanduser().resolve()
        if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
            return (
                f"{folder} is outside the folders this server writes to ({', '.join(map(str, roots[:1]))} "
                "and its model folders); a job sent over REST writes only there"
            )
    return ""


def build_router(runner: Callable[[], JobRunner], dependencies: list[Any]) -> APIRouter:
    """The routes over the job runner `runner()` returns, called per request (the WebUI's outlives UI
    reloads)."""
    router = APIRouter(prefix=PREFIX, dependencies=dependencies, tags=["liandan"])

    @router.get("/kinds", summary="The job kinds")
    def list_kinds() -> dict[str, list[str]]:
        return {"kinds": registry.kinds()}

    @router.get("/jobs", summary="Every job's status")
    def list_jobs(since: int | None = SINCE) -> dict[str, Any]:
        return {"jobs": [status.to_dict(since) for status in runner().jobs()]}

    @router.get("/jobs/{job_id}", summary="One job's status", responses={404: {"description": "No such job"}})
    def get_job(job_id: str, since: int | None = SINCE) -> dict[str, Any]:
        status = runner().status(job_id)
        if status is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
        return status.to_dict(since)

    @router.post(
        "/jobs",
        summary="Queue a job",
        responses={
            403: {"description": "The job would write outside the host's folders"},
            422: {"description": "The spec is not valid"},
        },
    )
    def submit_job(spec: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008 - FastAPI's idiom
        try:
            job = job_from_dict(spec)
        except LiandanError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
        job_runner = runner()
        outside = folders_outside(job, job_runner.host.folders)
        if outside:
            raise HTTPException(status_code=403, detail=outside)
        return {"id": job_runner.submit(job)}

    @router.post(
        "/jobs/{job_id}/cancel",
        summary="Stop a queued or running job",
        responses={404: {"description": "No such job"}, 409: {"description": "The job has finished"}},
    )
    def cancel_job(job_id: str) -> dict[str, str]:
        try:
            state = runner().cancel(job_id)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no job {job_id!r}") from None
        if state in FINISHED:
            raise HTTPException(status_code=409, detail=f"job {job_id!r} has already finished ({state})")
        return {"id": job_id, "state": "cancelling" if state == "running" else "cancelled"}

    @router.post("/interrupt", summary="Stop the running job")
    def interrupt() -> dict[str, bool]:
        return {"interrupted": runner().interrupt()}

    return router
