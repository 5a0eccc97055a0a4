from __future__ import annotations

import pytest
from PIL import Image
from preprocess_models import make_wd14_folder

from liandan.errors import CheckpointError
from liandan.preprocess.wd14 import Wd14Captioner, Wd14Options, read_tags_csv


@pytest.fixture(scope="module")
def wd14_folder(tmp_path_factory):
    return make_wd14_folder(tmp_path_factory.mktemp("wd14"))


def _captioner(folder, **options) -> Wd14Captioner:
    return Wd14Captioner.load(Wd14Options(model=str(folder), **options), models_dir=folder)


def test_default_thresholds_character_first_kaomoji_and_escapes(wd14_folder) -> None:
    captioner = _captioner(wd14_folder)
    assert captioner.size == 32
    images = [Image.new("RGB", (50, 20), "white"), Image.new("RGBA", (8, 8), (0, 0, 0, 0))]
    expected = r"hatsune miku, 1girl, ^_^, long \(hair\), solo"
    assert captioner.caption(images) == [expected, expected]


def test_options_change_the_caption(wd14_folder) -> None:
    captioner = _captioner(
        wd14_folder, general_threshold=0.55, character_threshold=0.5, rating_tags=True,
        character_first=False, exclude_tags="long (hair), ^_^", use_spaces=False, escape_brackets=False,
    )  # fmt: skip
    image = Image.new("RGB", (32, 32), "gray")
    assert captioner.caption([image]) == ["general, 1girl, hatsune_miku, other_character"]


def test_fixed_batch_models_run_image_by_image(tmp_path) -> None:
    captioner = _captioner(make_wd14_folder(tmp_path / "fixed", batch_dim_fixed=True))
    assert captioner.fixed_batch
    assert len(captioner.caption([Image.new("RGB", (9, 9))] * 3)) == 3


def test_bad_folders_are_explained(tmp_path, wd14_folder) -> None:
    (tmp_path / "model.onnx").write_bytes((wd14_folder / "model.onnx").read_bytes())
    with pytest.raises(CheckpointError, match=r"selected_tags\.csv is missing"):
        _captioner(tmp_path)
    (tmp_path / "selected_tags.csv").write_text("tag_id,name,category\n0,a,0\n")
    with pytest.raises(CheckpointError, match="9 outputs but the CSV lists 1"):
        _captioner(tmp_path)
    (tmp_path / "selected_tags.csv").write_text("just,words\n")
    with pytest.raises(CheckpointError, match="name and category"):
        read_tags_csv(tmp_path / "selected_tags.csv")


def test_missing_hub_model_offline_names_file_and_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIANDAN_OFFLINE", "1")
    with pytest.raises(CheckpointError) as e:
        Wd14Captioner.load(Wd14Options(model="SmilingWolf/wd-swinv2-tagger-v3"), tmp_path)
    message = str(e.value)
    folder, hub = tmp_path / "wd14_tagger" / "wd-swinv2-tagger-v3", "https://huggingface.co/SmilingWolf"
    assert message.startswith("2 weight files are missing")  # both in one message, not one per run
    for name in ("model.onnx", "selected_tags.csv"):
        assert f"{folder / name}  from {hub}/wd-swinv2-tagger-v3/resolve/main/{name}" in message
