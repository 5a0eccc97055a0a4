"""Known harmless messages of our dependencies, kept out of the console (the CLI's and the WebUI's).

Each entry is one logger and the start of one message, so a dependency's real warnings and errors still
show. Installed by the CLI at start and, inside the WebUI, by preload.py: A1111 runs extension preloads
before anything imports accelerate (which imports bitsandbytes, which logs at import time).
"""

from __future__ import annotations

import logging

HARMLESS = (
    # bitsandbytes on AVX512-BF16 CPUs, at import: an optional 4-bit CPU kernel from the hub, which liandan
    # never uses (its 8-bit optimizers do not need it) and which no offline install can have
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
)


class _DropHarmless(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_dependency_noise() -> None:
    """Drop the HARMLESS messages; calling it again adds nothing."""
    for logger_name, prefix in HARMLESS:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropHarmless) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropHarmless(prefix))
