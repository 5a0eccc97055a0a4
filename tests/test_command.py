from __future__ import annotations

import argparse

import pytest
from PIL import Image

from liandan.errors import ConfigError
from liandan.preprocess.command import add_parser, job_from_args


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["preprocess", *argv])


def test_options_map_to_the_job(tmp_path) -> None:
    args = _parse(["in", "out", "--width", "64", "--flip", "both", "--captioners", "wd14", "blip",
                   "--no-tag-use-spaces", "--tag-threshold", "0.75"])  # fmt: skip
    job = job_from_args(args)
    assert (job.width, job.flip, job.captioners) == (64, "both", ("wd14", "blip"))
    assert job.tag_use_spaces is False and job.tag_threshold == 0.75 and job.height == 512


def test_every_option_is_explained_with_the_tabs_words_and_its_default() -> None:
    import dataclasses

    from liandan.preprocess.job import LABELS, PreprocessJob

    parser = argparse.ArgumentParser()
    sub = add_parser(parser.add_subparsers())
    helps = {a.dest: a.help for a in sub._actions}
    for f in dataclasses.fields(PreprocessJob):
        if f.name in helps and f.name not in ("source", "destination"):  # positionals say more
            assert helps[f.name].startswith(LABELS[f.name]), f.name
            assert "(default: " in helps[f.name]
    assert helps["tag_threshold"] == "Deepbooru score threshold (guides: 0.75) (default: 0.5)"
    assert helps["recursive"].endswith("(default: off)")


def test_job_file_is_the_base_and_options_override(tmp_path) -> None:
    (tmp_path / "job.toml").write_text('kind = "preprocess"\nwidth = 128\nflip = "vertical"\n')
    job = job_from_args(_parse(["in", "out", "--job", str(tmp_path / "job.toml"), "--flip", "none"]))
    assert (job.width, job.flip) == (128, "none")


def test_runs_end_to_end_and_refuses_writing_into_the_source(tmp_path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (40, 40), "red").save(src / "a.png")
    args = _parse([str(src), str(tmp_path / "out"), "--width", "32", "--height", "32",
                   "--models-dir", str(tmp_path / "models")])  # fmt: skip
    assert args.run(args) == 0
    assert "1 processed" in capsys.readouterr().out
    assert (tmp_path / "out" / "a.png").is_file()
    inside = _parse([str(src), str(src / "out")])
    with pytest.raises(ConfigError, match="never written"):
        inside.run(inside)
