from __future__ import annotations

from pathlib import Path

import pytest

from liandan.errors import ConfigError
from liandan.jobs import job_from_dict, job_to_dict
from liandan.preprocess.job import PreprocessJob


def test_round_trips_through_dicts() -> None:
    job = PreprocessJob(source=Path("in"), destination=Path("out"), captioners=("wd14", "blip"), flip="both")
    data = job_to_dict(job)
    assert data["kind"] == "preprocess" and data["captioners"] == ["wd14", "blip"]
    assert job_from_dict(data) == job


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"captioners": ("deepbooru", "deepbooru")}, "twice"),
        ({"captioners": ("clip",)}, "expected one of"),
        ({"captioners": ("deepdanbooru",)}, "deepdanbooru_project"),
        ({"blip_min_length": 50, "blip_max_length": 10}, "blip_min_length"),
        ({"autosize_min_dim": 900}, "autosize_min_dim"),
        ({"overlap_ratio": 0.95}, "out of range"),
    ],
)
def test_bad_settings_are_refused(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        PreprocessJob(**changes)


def test_from_toml_style_dict_rejects_typos() -> None:
    with pytest.raises(ConfigError, match="captioner"):
        job_from_dict({"kind": "preprocess", "captioner": ["blip"]})
