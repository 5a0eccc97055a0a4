"""A1111 runs this before it imports torch or accelerate: keep our dependencies' known harmless import-time
messages out of the WebUI console (liandan/dependency_noise.py says which)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parent)


def preload(parser: Any) -> None:
    # the extension root is on sys.path only for this import; the package stays imported afterwards
    sys.path.insert(0, _ROOT)
    try:
        from liandan.dependency_noise import quiet_dependency_noise
    finally:
        sys.path.remove(_ROOT)
    quiet_dependency_noise()
