"""Packages liandan keeps outside the WebUI's own environment, in `.packages/` of the extension folder.

install.py puts a requirement marked `# private` there (bitsandbytes): when the WebUI's accelerate and
transformers can import it, they do so at every WebUI start, and it then logs a warning on many CPUs. Out of
their sight it is imported only when a job needs it. The folder joins the end of sys.path on that first use,
so the environment's own packages (and its copy of the package, if it has one) always win.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

PRIVATE_DIR = Path(__file__).resolve().parents[1] / ".packages"  # install.py's PRIVATE_DIR


def import_private(module: str) -> ModuleType:
    """`import module`, from the environment or else from PRIVATE_DIR; ImportError when in neither."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if not PRIVATE_DIR.is_dir() or str(PRIVATE_DIR) in sys.path:
            raise
    sys.path.append(str(PRIVATE_DIR))
    importlib.invalidate_caches()
    return importlib.import_module(module)
