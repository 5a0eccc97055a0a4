from __future__ import annotations

import random
from pathlib import Path

import pytest

from liandan.data.templates import BUILTIN_TEMPLATES_DIR, PromptTemplate, list_templates, resolve_template
from liandan.errors import DatasetError

SHIPPED = [
    "liandan_hypernetwork.txt",
    "liandan_none.txt",
    "liandan_style.txt",
    "liandan_style_filewords.txt",
    "liandan_subject.txt",
    "liandan_subject_filewords.txt",
]


def test_we_ship_the_six_templates_with_the_right_placeholders() -> None:
    assert sorted(p.name for p in BUILTIN_TEMPLATES_DIR.glob("*.txt")) == SHIPPED
    for name in SHIPPED:
        template = PromptTemplate.load(name)
        assert template.uses_filewords == ("filewords" in name or name == "liandan_hypernetwork.txt"), name
        if name.startswith(("liandan_style", "liandan_subject")):
            assert all("[name]" in line for line in template.lines), name


def test_user_folder_overrides_ours_and_paths_work(tmp_path: Path) -> None:
    user = tmp_path / "user"
    (user / "nested").mkdir(parents=True)
    (user / "nested" / "liandan_style.txt").write_text("mine [name]\n")
    (user / "extra.txt").write_text("extra\n")
    assert list_templates(user)["liandan_style.txt"] == user / "nested" / "liandan_style.txt"
    assert resolve_template("liandan_subject.txt", user) == BUILTIN_TEMPLATES_DIR / "liandan_subject.txt"
    assert resolve_template("extra.txt", user) == user / "extra.txt"
    elsewhere = tmp_path / "t.txt"
    elsewhere.write_text("x\n")
    assert resolve_template(str(elsewhere)) == elsewhere
    with pytest.raises(DatasetError, match=r"'nope\.txt' not found.*known templates: .*style\.txt"):
        resolve_template("nope.txt", user)


def test_empty_template_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DatasetError, match="no prompt lines"):
        PromptTemplate.load(str(empty))


def _template(tmp_path: Path, text: str, **kwargs) -> PromptTemplate:
    path = tmp_path / "t.txt"
    path.write_text(text)
    return PromptTemplate.load(str(path), **kwargs)


def test_substitution(tmp_path: Path) -> None:
    template = _template(tmp_path, "a [filewords] by [name]\n\n")
    assert template.lines == ("a [filewords] by [name]",)
    assert template.fill("cat, dog", "me", random.Random(0)) == "a cat, dog by me"


def test_dropout_and_shuffle_follow_a1111_and_are_reproducible(tmp_path: Path) -> None:
    caption = ",".join(f"t{i}" for i in range(20))
    shuffled = _template(tmp_path, "[filewords]", shuffle_tags=True)
    first = shuffled.fill(caption, "n", random.Random(5))
    assert first == shuffled.fill(caption, "n", random.Random(5))
    assert first != shuffled.fill(caption, "n", random.Random(6))
    assert sorted(first.split(",")) == sorted(caption.split(","))  # shuffle keeps every tag
    dropped = _template(tmp_path, "[filewords]", tag_dropout=0.5)
    kept = dropped.fill(caption, "n", random.Random(1)).split(",")
    assert 0 < len(kept) < 20 and kept == sorted(kept, key=lambda t: int(t[1:]))  # order kept
    # A1111's rule: a tag survives when random() > p
    rng = random.Random(1)
    rng.choice(dropped.lines)
    assert kept == [t for t in caption.split(",") if rng.random() > 0.5]
    assert _template(tmp_path, "[filewords]", tag_dropout=1.0).fill(caption, "n", random.Random(0)) == ""


def _webui_templates(fixtures_dir: Path) -> Path:
    return fixtures_dir.parents[1] / "a1111-webui-1.10.1" / "textual_inversion_templates"


@pytest.mark.fixtures
def test_no_shipped_template_shares_a_name_with_the_webuis(fixtures_dir: Path) -> None:
    webui = {p.name for p in _webui_templates(fixtures_dir).glob("*.txt")}
    assert webui and not webui & set(SHIPPED)


@pytest.mark.fixtures
@pytest.mark.slow
def test_the_cli_on_a_webui_folder_uses_the_webuis_templates_and_records_them(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    """The same job trains on the same prompts from the tab and from `--data-dir <webui>`; the provenance
    beside the embedding says which file and lines it used."""
    import json
    import shutil
    import subprocess
    import sys

    webui = tmp_path / "webui"
    shutil.copytree(_webui_templates(fixtures_dir), webui / "textual_inversion_templates")
    repo = Path(__file__).resolve().parents[1]
    settings = ["train.max_steps=2", "train.save_every=0", "train.preview_every=0", "preview.self_test=false"]
    command = [sys.executable, "-m", "liandan", "train", str(repo / "examples" / "demo_ti.toml")]
    command += ["--data-dir", str(webui), "--set", 'data.template="style_filewords.txt"']
    for setting in settings:
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    webui_file = webui / "textual_inversion_templates" / "style_filewords.txt"
    record = json.loads((webui / "embeddings" / "liandan-demo.liandan.json").read_text())
    assert record["templates"][0]["file"] == str(webui_file)
    assert record["templates"][0]["lines"] == [
        line for line in webui_file.read_text().splitlines() if line.strip()
    ]
