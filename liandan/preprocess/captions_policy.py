"""What to do with a caption that already exists, how captioners' outputs are joined, and caption-as-name.

A1111 writes `<image stem>.txt` and joins the parts with ", ". The older A1111 preprocessing put the
caption in the file name instead (`00001-0-a cat, sitting.png`); [filewords] strips the leading numbers
and dashes and reads the rest, so that form is offered too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

ExistingCaption = Literal["ignore", "keep", "prepend", "append"]

# Characters Windows refuses in names; [filewords] gets them back as nothing, which is acceptable.
_UNSAFE_IN_NAME = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
MAX_NAME_BYTES = 200  # below every common file system's 255-byte limit, with room for a suffix


def join_captions(parts: list[str]) -> str:
    return ", ".join(part.strip() for part in parts if part and part.strip())


def apply_policy(existing: str | None, generated: str, policy: ExistingCaption) -> str:
    """The caption to write. `keep` returns the existing caption untouched when there is one."""
    existing = (existing or "").strip()
    if not existing or policy == "ignore":
        return generated
    if policy == "keep":
        return existing
    if policy == "prepend":
        return join_captions([existing, generated])
    return join_captions([generated, existing])


def read_existing_caption(image_path: Path) -> str | None:
    caption_file = image_path.with_suffix(".txt")
    if not caption_file.is_file():
        return None
    return caption_file.read_text(encoding="utf-8", errors="replace").strip()


def caption_file_name(index: int, caption: str, suffix: str) -> str:
    """`00001-<caption>.png`, made safe for every file system and truncated on a UTF-8 boundary."""
    safe = _UNSAFE_IN_NAME.sub("", caption).strip().rstrip(".")
    prefix = f"{index:05d}-"
    budget = MAX_NAME_BYTES - len(prefix) - len(suffix.encode("utf-8"))
    encoded = safe.encode("utf-8")[:budget]
    safe = encoded.decode("utf-8", errors="ignore").rstrip()
    return f"{prefix}{safe}{suffix}"
