import datetime as dt
from pathlib import Path

import pytest

from liandan.errors import DatasetError
from liandan.host.standalone import StandaloneHost
from liandan.jobs import DataSpec, TextualInversionJob
from liandan.methods.training_job import find_run_dir, run_training_job
from liandan.progress import Control, Reporter


def test_run_dir_is_dated_like_a1111(tmp_path: Path) -> None:
    day = dt.date(2026, 11, 25)
    assert find_run_dir(tmp_path, "cat", resume=True, today=day) == tmp_path / "2026-11-25" / "cat"


def test_resumable_run_keeps_the_folder_it_started_in(tmp_path: Path) -> None:
    (tmp_path / "2026-11-20" / "cat" / "state").mkdir(parents=True)
    later = dt.date(2026, 11, 25)
    assert find_run_dir(tmp_path, "cat", resume=True, today=later) == tmp_path / "2026-11-20" / "cat"
    assert find_run_dir(tmp_path, "cat", resume=False, today=later) == tmp_path / "2026-11-25" / "cat"
    assert find_run_dir(tmp_path, "dog", resume=True, today=later) == tmp_path / "2026-11-25" / "dog"


def test_missing_dataset_folder_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    job = TextualInversionJob(name="cat", data=DataSpec(folder=tmp_path / "nowhere"))

    def never(_context):
        raise AssertionError("no method may be built")

    with pytest.raises(DatasetError, match="nowhere does not exist"):
        run_training_job(
            job,
            host,
            Reporter(),
            Control(),
            name="cat",
            artifact_kind="embeddings",
            loss_csv_name="x.csv",
            make_method=never,
        )
    assert not list(host.folders.checkpoints.iterdir())  # nothing loaded, nothing written
