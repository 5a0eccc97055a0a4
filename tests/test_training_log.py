"""The loss CSV matches A1111's byte for byte in layout; TensorBoard gets A1111's scalar names."""

from __future__ import annotations

from pathlib import Path

import pytest

from liandan.train.training_log import LossCsv, TensorBoardLog


@pytest.mark.fixtures
def test_csv_matches_a1111_fixture_bytes(fixtures_dir: Path, tmp_path: Path) -> None:
    golden = fixtures_dir / "textual_inversion" / "2026-11-25" / "goldti" / "textual_inversion_loss.csv"
    ours = LossCsv(tmp_path / "textual_inversion_loss.csv")
    for step, loss in enumerate([1.0372746, 0.8759461, 1.0848691, 0.9251848], start=1):
        ours.append(step, 0, step - 1, loss, 0.005)
    assert ours.path.read_bytes() == golden.read_bytes()


@pytest.mark.fixtures
def test_small_rates_are_written_like_a1111(fixtures_dir: Path, tmp_path: Path) -> None:
    golden = fixtures_dir / "textual_inversion" / "2026-11-25" / "goldhn_a" / "hypernetwork_loss.csv"
    ours = LossCsv(tmp_path / "hypernetwork_loss.csv")
    ours.append(1, 0, 0, 1.2364852, 1e-05)
    assert (
        ours.path.read_bytes()
        == golden.read_bytes().splitlines(keepends=True)[0] + golden.read_bytes().splitlines(keepends=True)[1]
    )


def test_append_on_resume_drops_rows_past_the_resumed_step(tmp_path: Path) -> None:
    log = LossCsv(tmp_path / "loss.csv")
    for step in range(1, 6):
        log.append(step, 0, step - 1, 1.0 / step, 0.01)
    log.drop_rows_after(3)
    log.append(4, 0, 3, 0.2, 0.01)
    lines = log.path.read_text().splitlines()
    assert lines[0] == "step,epoch,epoch_step,loss,learn_rate"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert lines[-1] == "4,0,3,0.2000000,0.01"
    assert log.path.read_bytes().count(b"\r\n") == 5


def test_tensorboard_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = TensorBoardLog(tmp_path / "tb")
    board.add(1, 0.5, 0.01)
    board.add(2, 0.25, 0.01)
    board.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"Loss/train", "Learn rate/train"}
    assert [e.value for e in events.Scalars("Loss/train")] == [0.5, 0.25]
