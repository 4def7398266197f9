"""Drop known, harmless log lines of libraries by their exact prefix; let everything else through.

Installed from `squeezegen/__init__.py`, so every stage and command gets them before any
library is imported (torch-free: importing this costs nothing).
"""

from __future__ import annotations

import logging

# On a CPU with AVX512-BF16, importing bitsandbytes (ours, or peft's / transformers' import of
# it) tries to fetch a 4-bit CPU kernel from the hub and logs this when it cannot. squeezegen
# never runs 4-bit, so it is noise in every stage log; any other bitsandbytes message still shows.
KERNEL_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"
KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"


class DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`; lets everything else through."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def drop(logger_name: str, prefix: str) -> None:
    """Install a `DropMessage(prefix)` on `logger_name` (once)."""
    logger = logging.getLogger(logger_name)  # the same object the library gets, whether or not it exists yet
    if not any(isinstance(f, DropMessage) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(DropMessage(prefix))


def silence_4bit_kernel_warning() -> None:
    """Hide bitsandbytes' "Failed to load CPU gemm_4bit_forward" import-time warning (and only it)."""
    drop(KERNEL_LOGGER, KERNEL_WARNING)
