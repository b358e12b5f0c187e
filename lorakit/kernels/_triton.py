"""Importing Triton for :mod:`lorakit.kernels`, and choosing between compiled kernels and the interpreter.

**When the choice is made.** ``@triton.jit`` decides, *when it decorates a function*, whether the function will
be compiled for a GPU or run by Triton's interpreter: it reads ``TRITON_INTERPRET`` at that moment
(``triton.knobs.runtime.interpret``). Two kinds of functions are decorated, at two moments:

* Triton's own helpers (``tl.sum``, ``tl.zeros``, ``tl.interleave``, ``tl.cdiv``: ``@triton.jit`` functions in
  ``triton.language.standard``) when ``triton`` is first imported. This is why the usual advice says "set
  ``TRITON_INTERPRET=1`` before importing triton": imported earlier, they are compiled-mode functions, and an
  interpreted kernel that calls one fails ("Cannot call @triton.jit'd outside of the scope of a kernel");
* lorakit's kernels when their module (``nf4_dequant``, ``nf4_matmul``, ``bgmv``) is first imported.

:func:`import_triton` sets the variable before it imports ``triton``: when ``TRITON_INTERPRET`` is unset and there
is no CUDA device, it sets ``TRITON_INTERPRET=1`` (compiled Triton cannot run on such a machine at all, so this
takes nothing away from any other Triton user in the process); with a CUDA device it sets nothing, and the kernels
are compiled; a value the user set is respected. And the kernels call only Triton's *builtins*
(``tl.full``, ``tl.join``/``tl.reshape``, ``tl.reduce``...), never those helpers, so they work through the
interpreter even when something imported ``triton`` before the variable was set (``pytest.importorskip("triton")``,
or torch): only lorakit's own decorations must come after it, and this module guarantees that.

Why not leave it to the callers: setting the variable in each test module or notebook works only for the first
file that imports the kernels, and running the interpreter tests in a subprocess costs an interpreter start per
run and hides tracebacks from pytest. ``tests/test_kernels_import.py`` checks both orders in fresh processes.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

__all__ = [
    "INSTALL_HINT", "INTERPRETER_DTYPES", "TRITON_VERSION", "available", "check_device", "import_triton",
    "interpreting", "launch_options",
]

#: The Triton release the kernels are tested with (the ``gpu`` extra pins it).
TRITON_VERSION = "3.9.0"
INSTALL_HINT = (
    f"lorakit.kernels needs Triton: pip install 'lorakit[gpu]' (or pip install triton=={TRITON_VERSION}); "
    "Triton ships wheels for Linux only. Without it every lorakit layer still runs in pure PyTorch."
)
#: dtypes the interpreter computes exactly (NumPy has no bfloat16: Triton's interpreter gets bf16 wrong).
INTERPRETER_DTYPES = (torch.float32, torch.float16)

_triton: ModuleType | None = None


def available() -> bool:
    """Whether ``triton`` can be imported (without importing the kernels)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def import_triton() -> ModuleType:
    """``triton``, with the interpreter switched on first when there is no CUDA device (module docstring).

    ImportError with :data:`INSTALL_HINT` when Triton is not installed.
    """
    global _triton
    if _triton is None:
        if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
        try:
            import triton
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        _triton = triton
    return _triton


def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (on the host, any device's tensors) rather than compiled."""
    knobs = getattr(import_triton(), "knobs", None)  # Triton >= 3.4; before it, the variable itself
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def check_device(name: str, t: torch.Tensor) -> None:
    """Compiled kernels need CUDA tensors; the interpreter takes tensors on any device (it copies them to the host)."""
    if t.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"{name} is on {t.device}, but the Triton kernels here are compiled for CUDA: move it to the GPU, or set "
            "TRITON_INTERPRET=1 before lorakit.kernels is first imported to run them through the interpreter"
        )


def launch_options() -> dict[str, object]:
    """Keyword options for every kernel launch: on a GPU, no fused multiply-add.

    The compiler would otherwise contract ``code * scale + offset`` (the double-quantized absmax) into one FMA,
    rounding once instead of twice, and the weight would differ in the last bit from the PyTorch reference and
    from bitsandbytes, which both multiply and add separately. (The interpreter ignores the option.)
    """
    return {} if interpreting() else {"enable_fp_fusion": False}
