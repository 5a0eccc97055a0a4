"""Every case of the hostile-input corpus (tests/hostile_corpus.py) has its expected outcome, none crashes,
and the run leaves a report: the totals on the terminal, every case in hostile-corpus.md."""

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
    destination = Path(os.environ.get("LIANDAN_REPORT_DIR", tmp_path)) / "hostile-corpus.md"
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(table + "\n", encoding="utf-8")
    with capsys.disabled():
        print(f"\n{table.splitlines()[0]} (every case: {destination})")
    assert not wrong, "\n".join(wrong)
