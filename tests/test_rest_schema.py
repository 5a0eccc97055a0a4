"""Schemathesis against the standalone server: for every `/liandan/v1/` operation of the server's OpenAPI
schema, requests generated from that schema (a bounded number) never get a server error."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from browser_driver import standalone_ui
from hypothesis import HealthCheck, given, settings

EXAMPLES = 40  # per operation


@pytest.mark.slow
def test_no_generated_request_makes_a_server_error(tmp_path: Path) -> None:
    with standalone_ui(tmp_path) as url:
        schema = schemathesis.openapi.from_url(f"{url}openapi.json").include(path_regex="^/liandan/v1/")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
            "GET /liandan/v1/kinds",
            "POST /liandan/v1/jobs",
            "GET /liandan/v1/jobs/{job_id}",
            "POST /liandan/v1/jobs/{job_id}/cancel",
        }
        for operation in operations:
            _no_server_error(operation, url.rstrip("/"))


def _no_server_error(operation: object, base_url: str) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())  # type: ignore[attr-defined]
    def check(case: object) -> None:
        response = case.call(base_url=base_url)  # type: ignore[attr-defined]
        where = f"{case.method} {case.formatted_path}"  # type: ignore[attr-defined]
        assert response.status_code < 500, f"{where}: {response.status_code} {response.text}"

    check()
