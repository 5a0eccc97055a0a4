from __future__ import annotations

from PIL import Image

from liandan.preprocess.autosize_crop import AutosizeSettings, aspect_error, autosize_crop, choose_size


def test_aspect_error_is_zero_for_matching_aspects() -> None:
    assert aspect_error((1000, 500), 512, 256) == 0.0
    assert 0 < aspect_error((1000, 500), 512, 512) < 1


def test_maximize_area_and_minimize_error_choose_differently() -> None:
    settings = AutosizeSettings(min_dim=384, max_dim=768, max_area=640 * 640, error_threshold=0.2)
    by_area = choose_size((1000, 700), settings)
    by_error = choose_size(
        (1000, 700), AutosizeSettings(**{**settings.__dict__, "objective": "minimize_error"})
    )
    assert by_area is not None and by_error is not None
    assert by_area[0] * by_area[1] >= by_error[0] * by_error[1]
    assert aspect_error((1000, 700), *by_error) <= aspect_error((1000, 700), *by_area)
    assert all(d % 64 == 0 and 384 <= d <= 768 for d in by_area + by_error)


def test_no_size_within_the_threshold_gives_none() -> None:
    settings = AutosizeSettings(error_threshold=0.0)
    assert autosize_crop(Image.new("RGB", (1000, 123)), settings) is None


def test_crop_has_the_chosen_size() -> None:
    out = autosize_crop(Image.new("RGB", (1024, 768)), AutosizeSettings())
    assert out is not None and out.size == choose_size((1024, 768), AutosizeSettings())
