"""Every case of the hostile-input corpus (tests/hostile_corpus.py) has its expected outcome, none crashes,
and the run prints its report: the totals and every case with its message (also written to
$LIANDAN_REPORT_DIR/hostile-corpus.md when that is set)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hostile_corpus import CASES, outcome, report


def test_the_corpus_is_large_and_its_names_are_unique() -> None:
    assert len(CASES) >= 60
    assert len({case.name for case in CASES}) == len(CASES)
    assert {"images", "names", "folders", "captions", "artifacts", "jobs"} <= {c.category for c in CASES}


def test_every_hostile_input_gets_its_expected_outcome(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results, wrong = [], []
    for number, case in enumerate(CASES):
        got, message = outcome(case, tmp_path / f"case{number}")
        results.append((case, got, message))
        if got != case.expected or not re.search(re.escape(case.says), message, re.IGNORECASE):
            wrong.append(f"{case.name}: expected {case.expected} saying {case.says!r}, got {got}: {message}")
    table = report(results)
    if os.environ.get("LIANDAN_REPORT_DIR"):
        destination = Path(os.environ["LIANDAN_REPORT_DIR"]) / "hostile-corpus.md"
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(table + "\n", encoding="utf-8")
    with capsys.disabled():  # the report: every case and its outcome, in the test log
        print(f"\n{table}")
    assert not wrong, "\n".join(wrong)
