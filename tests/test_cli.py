from __future__ import annotations

import importlib.machinery
import os
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from liandan import cli, registry
from liandan.errors import ConfigError, DatasetError
from liandan.jobs import JobSpec
from liandan.progress import ProgressEvent

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CliJob(JobSpec):
    kind: ClassVar[str] = "cli_test_job"
    steps: int = 3
    behaviour: str = "ok"  # "ok" | "dataset_error" | "ctrl_c"


def cli_runner(spec: CliJob, host, reporter, control) -> None:
    reporter(ProgressEvent("start", total=spec.steps))
    for step in range(1, spec.steps + 1):
        if spec.behaviour == "dataset_error":
            raise DatasetError(f"{host.data_dir / 'pics'} holds no images (.png, .jpg, .webp)")
        if spec.behaviour == "ctrl_c" and step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        if control.interrupted:
            return
        reporter(ProgressEvent("step", step=step, total=spec.steps, loss=1.0 / step))
    out = host.folders.embeddings / "cat.safetensors"
    # the engine says "finished" as a stage and again with "done": the terminal should show it once
    reporter(ProgressEvent("message", message=f"finished: {spec.steps} steps"))
    reporter(ProgressEvent("done", step=spec.steps, total=spec.steps, paths=(out,),
                           message=f"finished: {spec.steps} steps"))  # fmt: skip


@pytest.fixture(autouse=True)
def _runner():
    registry.register(registry.Method(CliJob, cli_runner, "CLI test"))
    yield
    registry.unregister(CliJob.kind)


def _job_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(f'kind = "cli_test_job"\n{body}\n', encoding="utf-8")
    return path


def test_help_is_fast_and_imports_no_torch_or_gradio() -> None:
    code = (
        "import sys\nfrom liandan.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'gradio', 'diffusers') if m in sys.modules]\nassert not heavy, heavy\n"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("train", "ui", "tiny-model", "info", "demo"):
        assert command in result.stdout
    assert time.perf_counter() - start < 5


def test_parse_overrides_reads_toml_values_and_dotted_keys() -> None:
    assert cli.parse_overrides(
        ["train.max_steps=10", "train.learn_rate='0.1:5, 0.01'", "name=cat", "flip=0.5"]
    ) == {
        "train": {"max_steps": 10, "learn_rate": "0.1:5, 0.01"},
        "name": "cat",
        "flip": 0.5,
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        cli.parse_overrides(["max_steps"])


def test_set_takes_numbers_for_a_schedule_and_names_a_mistyped_key(tmp_path: Path) -> None:
    from liandan.jobs import load_job_file

    path = tmp_path / "ti.toml"
    path.write_text('kind = "textual_inversion"\nname = "cat"\n', encoding="utf-8")
    job = cli.with_overrides(load_job_file(path), ["train.learn_rate=0.01", "train.max_steps=7"])
    assert job.train.learn_rate == "0.01" and job.train.max_steps == 7
    with pytest.raises(ConfigError, match="did you mean 'learn_rate'"):
        cli.with_overrides(job, ["train.learning_rate=0.01"])


def test_train_runs_the_job_with_overrides_and_prints_outputs(tmp_path: Path, capsys) -> None:
    job = _job_file(tmp_path, "steps = 2")
    code = cli.main(["train", str(job), "--data-dir", str(tmp_path / "data"), "--set", "steps=4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"wrote {tmp_path / 'data' / 'embeddings' / 'cat.safetensors'}" in out
    assert f"logs in {tmp_path / 'data' / 'textual_inversion'}" in out
    assert "4/4" in err  # the progress bar ran to the overridden step count
    assert (out + err).count("finished: 4 steps") == 1


def test_user_errors_exit_1_with_the_message_and_no_traceback(tmp_path: Path, capsys) -> None:
    job = _job_file(tmp_path, 'behaviour = "dataset_error"')
    assert cli.main(["train", str(job), "--data-dir", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "pics holds no images" in err and "Traceback" not in err

    assert cli.main(["train", str(_job_file(tmp_path, "stepz = 2"))]) == 1
    assert "unknown setting(s) for CliJob: stepz" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read job file" in capsys.readouterr().err


def test_ctrl_c_stops_the_job_cleanly(tmp_path: Path, capsys) -> None:
    job = _job_file(tmp_path, 'behaviour = "ctrl_c"')
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["train", str(job), "--data-dir", str(tmp_path / "data")]) == cli.EXIT_INTERRUPTED
    assert "run the same command again to resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before


def test_the_shipped_demo_job_is_a_valid_textual_inversion_job() -> None:
    from liandan.jobs import load_job_file

    job = load_job_file(cli.DEMO_JOB)
    assert job.kind == "textual_inversion" and job.data.folder.is_dir()


def test_demo_runs_its_job_file(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "DEMO_JOB", _job_file(tmp_path, "steps = 1"))
    assert cli.main(["demo", "--data-dir", str(tmp_path / "data")]) == 0
    assert "cat.safetensors" in capsys.readouterr().out


def test_tiny_model_writes_into_out(tmp_path: Path, capsys) -> None:
    assert cli.main(["tiny-model", "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    for name in ("liandan-tiny-sd1.safetensors", "liandan-tiny-sd1.yaml", "liandan-tiny-sdxl.safetensors"):
        assert f"wrote {tmp_path / 'm' / name}" in out and (tmp_path / "m" / name).is_file()


def test_info_prints_versions_says_there_is_no_gpu_and_refuses_a_missing_file(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import torch

    import liandan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert cli.main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines.count(f"liandan {liandan.__version__}") == 1
    gpu = next(line for line in lines if line.startswith("gpu "))
    assert "none found" in gpu and "training runs on the CPU" in gpu
    assert cli.main(["info", str(tmp_path / "nope.safetensors")]) == 1
    assert "nope.safetensors: file not found" in capsys.readouterr().err


def test_info_describes_an_embedding_and_a_real_checkpoint(tmp_path: Path, capsys) -> None:
    from liandan.formats.embedding import Embedding, save_embedding_pt
    from liandan.models.tiny import write_tiny_models

    embedding = save_embedding_pt(Embedding("cat", {"*": torch.zeros(2, 768)}), tmp_path / "cat.pt")
    assert cli.main(["info", str(embedding)]) == 0
    out = capsys.readouterr().out
    assert "kind    A1111 textual-inversion embedding" in out and "family  SD1 (text encoder 768)" in out

    assert cli.main(["info", str(write_tiny_models(tmp_path)["sdxl"])]) == 0
    out = capsys.readouterr().out
    assert "kind    Stable Diffusion checkpoint" in out and "family  SDXL" in out


def test_other_packages_add_subcommands(monkeypatch, capsys) -> None:
    module = types.ModuleType("fake_command")
    module.__spec__ = importlib.machinery.ModuleSpec("fake_command", None)

    def add_parser(subparsers) -> None:
        hello = subparsers.add_parser("hello", help="say hello")
        hello.set_defaults(run=lambda args: print("hello") or 0)

    module.add_parser = add_parser
    monkeypatch.setitem(sys.modules, "fake_command", module)
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("fake_command", "no_such_module_anywhere"))
    assert cli.main(["hello"]) == 0
    assert capsys.readouterr().out == "hello\n"
