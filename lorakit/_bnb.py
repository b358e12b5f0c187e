"""Import bitsandbytes quietly (used by ``lorakit.nf4``/``lorakit.qlora`` cross-checks and notebooks 06-08).

On CPUs with AVX512-BF16, bitsandbytes 0.50 logs a warning at import time when the optional
``kernels`` package (which would download a fused CPU kernel from the Hugging Face Hub) is missing.
The course never downloads at run time, so the warning is expected noise; it would also land in the
notebooks' stderr, which nbval compares. This helper raises that one logger's threshold to ERROR
before importing, and restores nothing else: real errors still show. ``import lorakit`` already calls
:func:`quiet_kernels_warning`, so PEFT or transformers imported after lorakit do not print it either.
"""

from __future__ import annotations

import logging
from types import ModuleType

#: The logger bitsandbytes' CPU backend warns on when the optional ``kernels`` package is missing.
KERNELS_LOGGER = "bitsandbytes.backends.cpu.ops"


def quiet_kernels_warning() -> None:
    """Raise the threshold of bitsandbytes' missing-``kernels`` logger to ERROR (does not import bitsandbytes)."""
    logging.getLogger(KERNELS_LOGGER).setLevel(logging.ERROR)


def import_bitsandbytes() -> ModuleType:
    """Return the ``bitsandbytes`` module, imported without the missing-``kernels`` warning.

    Raises ImportError with an install hint when bitsandbytes is not installed.
    """
    quiet_kernels_warning()
    try:
        import bitsandbytes
    except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
        raise ImportError(
            "bitsandbytes is needed for this cross-check; install the course extras: pip install -e '.[course]'"
        ) from exc
    return bitsandbytes
