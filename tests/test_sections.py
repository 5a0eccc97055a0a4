from __future__ import annotations

from liandan.jobs import TextualInversionJob
from liandan.ui.sections import LABELS, SECTIONS
from liandan.ui.spec_form import SpecForm


def test_the_shared_sections_place_every_training_data_and_preview_setting_once() -> None:
    """A field added to TrainSpec, DataSpec or PreviewSpec must get a place (and a label) here, or no
    training tab could reach it."""
    shared = [
        p
        for p in SpecForm(TextualInversionJob, "t").leaf_paths()
        if p.split(".")[0] in ("train", "data", "preview")
    ]
    placed = [path for _, rows in SECTIONS for row in rows for path in row]
    assert len(placed) == len(set(placed))
    assert set(placed) == {*shared, "log_dir", "clip_skip"}
    assert set(LABELS) == set(placed)
