"""Prompt templates: one prompt per line, with `[name]` (the trained name) and `[filewords]` (the caption).

A template argument is a file name looked up in the user's templates folder (searched recursively, like
A1111's `textual_inversion_templates`), then in ours (`liandan/data/templates/`), or a path to a file. Ours
are named `liandan_*.txt`, never like the WebUI's own files, so a name means the same file inside the WebUI
and on the command line pointed at the same folder tree.

Filling follows A1111's `create_text`: pick a line; split the caption on "," (spaces kept); drop each tag
unless `random() > tag_dropout`; shuffle the tags if asked; join them with ","; replace `[filewords]`, then
`[name]`. The random numbers come from the generator the caller passes, so the result is reproducible.
Blank lines of a template are ignored (A1111 would pick them as an empty prompt). A dataset may instead give
one literal prompt (DreamBooth's instance and class prompts): a template of that one line, from no file.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from liandan.errors import DatasetError

BUILTIN_TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def list_templates(user_dir: Path | None = None) -> dict[str, Path]:
    """Template file name -> path: ours, overridden by the user's (searched recursively)."""
    found = {p.name: p for p in sorted(BUILTIN_TEMPLATES_DIR.glob("*.txt"))}
    if user_dir is not None and Path(user_dir).is_dir():
        for root, _dirs, names in sorted(os.walk(user_dir)):
            for name in sorted(names):
                if name.endswith(".txt"):
                    found[name] = Path(root) / name
    return found


def resolve_template(template: str, user_dir: Path | None = None) -> Path:
    """The file a template argument names: a file name in the templates folders, or a path."""
    if not template:
        raise DatasetError("no prompt template given: name a file such as 'liandan_style_filewords.txt'")
    known = list_templates(user_dir)
    if template in known:
        return known[template]
    path = Path(template).expanduser()
    if path.is_file():
        return path
    where = f"{user_dir} or {BUILTIN_TEMPLATES_DIR}" if user_dir else str(BUILTIN_TEMPLATES_DIR)
    raise DatasetError(
        f"prompt template {template!r} not found in {where} and is not a file; "
        f"known templates: {', '.join(sorted(known))}"
    )


@dataclass(frozen=True)
class PromptTemplate:
    path: Path | None  # None: a literal prompt, not read from a file
    lines: tuple[str, ...]
    shuffle_tags: bool = False
    tag_dropout: float = 0.0

    @classmethod
    def load(
        cls, template: str, user_dir: Path | None = None, shuffle_tags: bool = False, tag_dropout: float = 0.0
    ) -> PromptTemplate:
        path = resolve_template(template, user_dir)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"cannot read prompt template {path}: {e}") from e
        lines = tuple(line.strip() for line in text.splitlines() if line.strip())
        if not lines:
            raise DatasetError(f"prompt template {path} has no prompt lines")
        return cls(path, lines, shuffle_tags, tag_dropout)

    @classmethod
    def literal(cls, prompt: str, shuffle_tags: bool = False, tag_dropout: float = 0.0) -> PromptTemplate:
        """The template of one prompt given as text ([filewords] and [name] are filled in as in a file)."""
        return cls(None, (prompt.strip(),), shuffle_tags, tag_dropout)

    def record(self) -> dict[str, object]:
        """Which file and lines a job used (its provenance): a user's file of the same name wins over ours.
        A literal prompt has the file ""."""
        return {"file": str(self.path) if self.path else "", "lines": list(self.lines)}

    @property
    def uses_filewords(self) -> bool:
        return any("[filewords]" in line for line in self.lines)

    def every_fill(self, caption: str, name: str) -> set[str] | None:
        """Every prompt `fill` can make of a caption; None when tag shuffle or dropout make them endless."""
        if self.shuffle_tags or self.tag_dropout:
            return None
        return {line.replace("[filewords]", caption).replace("[name]", name) for line in self.lines}

    def fill(self, caption: str, name: str, rng: random.Random) -> str:
        """One prompt: a line of the template with the caption's tags (after dropout/shuffle) and name."""
        line = rng.choice(self.lines)
        tags = caption.split(",")
        if self.tag_dropout:
            tags = [tag for tag in tags if rng.random() > self.tag_dropout]
        if self.shuffle_tags:
            rng.shuffle(tags)
        return line.replace("[filewords]", ",".join(tags)).replace("[name]", name)
