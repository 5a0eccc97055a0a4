from pathlib import Path

import pytest

from liandan.errors import ConfigError
from liandan.jobs import (
    HypernetworkJob,
    TextualInversionJob,
    TrainSpec,
    job_from_dict,
    job_to_dict,
    load_job_file,
)


def test_toml_job_round_trips_through_dict(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(
        'kind = "textual_inversion"\nname = "cat"\nvectors = 4\n'
        '[train]\nlearn_rate = "0.1:50, 0.01:100"\nmax_steps = 100\n'
        '[data]\nfolder = "images"\nflip = 0.5\n'
    )
    job = load_job_file(path)
    assert isinstance(job, TextualInversionJob)
    assert job.data.folder == tmp_path / "images" and job.data.flip == 0.5
    assert job.train.learn_rate == "0.1:50, 0.01:100"
    assert job_from_dict(job_to_dict(job)) == job


def test_partial_section_keeps_the_jobs_own_defaults() -> None:
    job = job_from_dict({"kind": "hypernetwork", "name": "h", "train": {"max_steps": 5}})
    assert isinstance(job, HypernetworkJob)
    assert job.train.learn_rate == HypernetworkJob(name="h").train.learn_rate != TrainSpec().learn_rate
    assert job.data.template == "liandan_hypernetwork.txt"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "textual_inversion", "vectors": 76}, "vectors = 76 is out of range"),
        ({"kind": "textual_inversion", "trian": {}}, "unknown setting(s) for TextualInversionJob: trian"),
        ({"kind": "textual_inversion", "train": {"optimizer": "Adam"}}, "expected one of 'AdamW'"),
        ({"kind": "textual_inversion", "train": {"batch_size": "2"}}, "expected int"),
        ({"kind": "textual_inversion", "spec_version": 99}, "spec_version 99"),
        ({"kind": "dreams"}, "job kind 'dreams' is unknown"),
        (
            {"kind": "textual_inversion", "name": "cat", "train": {"learning_rate": "0.1"}},
            "did you mean 'learn_rate' (for 'learning_rate')?",
        ),
        (
            {"kind": "textual_inversion", "name": "cat", "train": {"learn_rate": "0.1:abc"}},
            "'abc' is not a number",
        ),
        (
            {
                "kind": "textual_inversion",
                "name": "cat",
                "train": {"clip_grad_mode": "norm", "clip_grad_value": "x"},
            },
            "clip_grad_value schedule 'x'",
        ),
        ({"kind": "textual_inversion", "name": ""}, "the embedding needs a name"),
        ({"kind": "hypernetwork", "name": "a:b"}, "hypernetwork name 'a:b': ':' not allowed"),
        ({"kind": "hypernetwork", "name": "../x"}, "'/' not allowed"),
        ({"kind": "hypernetwork", "name": " x"}, "must not start or end with a space"),
        ({"kind": "hypernetwork", "name": "h", "layer_structure": "1, abc, 1"}, "'abc' is not a number"),
        ({"kind": "hypernetwork", "name": "h", "activation": "relux"}, "unknown hypernetwork activation"),
    ],
)
def test_bad_settings_name_the_value(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        job_from_dict(data)
    assert message in str(e.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("kind = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        load_job_file(path)


def test_relative_paths_are_taken_from_the_job_files_folder(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "jobs" / "job.toml"
    path.write_text(
        'kind = "textual_inversion"\nname = "cat"\nlog_dir = "logs"\n[data]\nfolder = "../images"\n'
    )
    job = load_job_file(path)
    assert job.data.folder == tmp_path / "jobs" / "../images"
    assert job.log_dir == tmp_path / "jobs" / "logs"
    absolute = tmp_path / "elsewhere"
    path.write_text(f'kind = "textual_inversion"\nname = "cat"\n[data]\nfolder = "{absolute.as_posix()}"\n')
    assert load_job_file(path).data.folder == absolute


def test_home_folders_are_expanded_once_and_stay_absolute_in_a_job_file(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text('kind = "textual_inversion"\nname = "cat"\n[data]\nfolder = "~/pics"\n')
    assert load_job_file(path).data.folder == Path.home() / "pics"


def test_a_number_where_text_is_expected_is_taken_as_its_text() -> None:
    job = job_from_dict({"kind": "hypernetwork", "name": "h", "train": {"learn_rate": 0.01}})
    assert job.train.learn_rate == "0.01"
