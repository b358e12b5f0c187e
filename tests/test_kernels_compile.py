"""Every kernel compiles for a Hopper GPU (sm_90) on this machine without one (``lorakit.kernels.aot``).

The interpreter tests check the kernels' arithmetic, but the interpreter runs Python and accepts programs the
compiler rejects. Triton's compiler needs no GPU to lower a kernel to PTX and assemble it (``ptxas`` ships in the
wheel), so CI checks the compiled path this far: each kernel compiles in bf16 (the dtype a GPU runs), with the
tile sizes a GPU run uses, and with no ``fma.rn.f32`` left in the PTX (fused multiply-add is switched off so that
the double-quantized absmax ``code * scale + offset`` rounds twice, as the reference; ``launch_options``).
It runs in its own process: the test process imported the kernels for the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="Triton is not installed (pip install 'lorakit[gpu]'): kernel tests skipped")


def test_every_kernel_compiles_for_sm90_without_a_gpu():
    env = {**os.environ, "TRITON_INTERPRET": "0", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "lorakit.kernels.aot", "--arch", "90", "--dtype", "bf16"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names == ["nf4_dequant", "nf4_matmul", "nf4_matmul_unaligned", "nf4_matmul_grad_x", "bgmv_shrink",
                     "bgmv_expand", "sgmv"]
    assert all(line.endswith(" 0 fma.rn.f32") for line in lines), lines
