"""The reproducibility record saved as JSON beside every output: the job spec, dataset file hashes,
library versions, seeds and the model it was trained on."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from liandan.atomic_files import write_text_atomic
from liandan.jobs import JobSpec, job_to_dict


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def provenance(
    job: JobSpec,
    *,
    dataset_files: Iterable[Path] = (),
    seed: int | None = None,
    model: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from liandan.versions import library_versions

    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "job": job_to_dict(job),
        "seed": seed,
        "model": model or {},
        "dataset": {str(p): file_sha256(p) for p in sorted(dataset_files)},
        "libraries": library_versions(),
        **(extra or {}),
    }


def provenance_path(artifact: Path) -> Path:
    """`cat.pt` → `cat.liandan.json`, beside the artifact."""
    return artifact.with_name(artifact.stem + ".liandan.json")


def write_provenance(artifact: Path, record: dict[str, Any]) -> Path:
    return write_text_atomic(provenance_path(artifact), json.dumps(record, indent=2, default=str) + "\n")
