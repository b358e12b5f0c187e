"""``lorakit.kernels`` is optional and robust to import order (each case in a fresh Python process).

* Without Triton, ``import lorakit`` and ``import lorakit.kernels`` work, ``available()`` is False, the references
  import, and asking for a kernel raises an ImportError that says what to install.
* Triton imported *before* ``lorakit.kernels`` (as ``pytest.importorskip("triton")`` or torch can do) on a machine
  without a GPU: the kernels still run through the interpreter (they call only Triton builtins; see
  ``lorakit/kernels/_triton.py``).
* ``TRITON_INTERPRET=0`` set by the user without a GPU: respected, and a CPU tensor is refused with a clear error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.update({"CUDA_VISIBLE_DEVICES": "", **env})  # the CPU path, also on a machine with a GPU
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env=environment)


def test_without_triton_lorakit_imports_and_kernels_say_what_to_install():
    result = _run("""
        import sys
        sys.modules["triton"] = None  # as if Triton were not installed: `import triton` raises ImportError
        import lorakit, lorakit.kernels, lorakit.kernels.reference
        assert not lorakit.kernels.available()
        for name in ("dequantize_nf4", "nf4_linear", "bgmv_shrink"):
            try:
                getattr(lorakit.kernels, name)
            except ImportError as exc:
                assert "pip install 'lorakit[gpu]'" in str(exc), exc
            else:
                raise AssertionError(name + " imported without triton")
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_triton_imported_first_still_runs_the_interpreter():
    pytest.importorskip("triton", reason="Triton is not installed")
    result = _run("""
        import triton  # before lorakit.kernels, and before TRITON_INTERPRET is set
        import torch
        from lorakit import nf4
        from lorakit.kernels import bgmv_shrink, dequantize_nf4, interpreting
        from lorakit.kernels.nf4_matmul import nf4_matmul
        assert interpreting()
        q = nf4.quantize_nf4(torch.randn(5, 64), 64, double_quant=True)
        assert torch.equal(dequantize_nf4(q), nf4.dequantize_nf4(q))
        y = nf4_matmul(torch.randn(3, 64), q.packed, q.absmax.codes, q.code, (5, 64), 64, torch.float32, None,
                       q.absmax.scales, q.absmax.offset)
        assert y.shape == (3, 5)
        v = bgmv_shrink(torch.randn(4, 64), torch.randn(2, 3, 64), torch.tensor([0, -1, 1, 1]))
        assert v.shape == (4, 3) and bool((v[1] == 0).all())
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_a_users_interpret_setting_is_respected():
    pytest.importorskip("triton", reason="Triton is not installed")
    result = _run("""
        import torch
        from lorakit import nf4
        from lorakit.kernels import dequantize_nf4, interpreting
        assert not interpreting()
        try:
            dequantize_nf4(nf4.quantize_nf4(torch.randn(64), 64))
        except ValueError as exc:
            assert "compiled for CUDA" in str(exc) and "TRITON_INTERPRET=1" in str(exc), exc
            print("ok")
    """, TRITON_INTERPRET="0")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
