"""Compile every kernel for a GPU architecture on a machine without a GPU (notebook 15; the CI check of the GPU path).

The interpreter runs a kernel's Python source, so it accepts programs that the compiler rejects (a shape that is
not a power of two, a type that does not promote, a ``tl.dot`` tile below 16). Triton's compiler itself needs no
GPU: given a target it lowers a kernel to PTX and assembles it with the ``ptxas`` bundled in the wheel. So a
machine without a GPU can still check that every kernel *compiles*, in the dtypes a GPU would run::

    TRITON_INTERPRET=0 python -m lorakit.kernels.aot --arch 90 --dtype bf16

It must run in a process of its own: in a process where the kernels were imported for the interpreter they are
interpreted functions, which cannot be compiled (:func:`compile_all` says so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["compile_all", "kernel_signatures"]

_DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def kernel_signatures(dtype: str = "bf16") -> list[tuple[str, object, dict, dict, dict]]:
    """``(name, kernel, signature, constexprs, options)`` for every kernel, with the tile sizes a GPU run uses."""
    from lorakit.kernels import bgmv, nf4_dequant, nf4_matmul

    t, u8, f32, i32, i64, c = "*" + _DTYPES[dtype], "*u8", "*fp32", "i32", "*i64", "constexpr"
    no_fma = {"enable_fp_fusion": False}
    nf4_state = {"packed_ptr": u8, "absmax_ptr": u8, "code_ptr": f32, "nested_scales_ptr": f32,
                 "nested_offset_ptr": f32, "nested_code_ptr": f32}
    quant = {"BLOCKSIZE": 64, "DOUBLE_QUANT": True, "NESTED_BLOCKSIZE": 256}
    matmul = {"x_ptr": t, **nf4_state, "bias_ptr": t, "y_ptr": t, "M": i32, "N": i32, "K": i32, "stride_xm": i32,
              "stride_xk": i32, **dict.fromkeys(quant, c), "ALIGNED": c, "HAS_BIAS": c, "BM": c, "BN": c, "BK": c}
    return [
        ("nf4_dequant", nf4_dequant._nf4_dequant_kernel,
         {"packed_ptr": u8, "absmax_ptr": u8, "code_ptr": f32, "out_ptr": t, "n_bytes": i32, "numel": i32,
          "nested_scales_ptr": f32, "nested_offset_ptr": f32, "nested_code_ptr": f32, **dict.fromkeys(quant, c),
          "BLOCK": c}, {**quant, "BLOCK": nf4_dequant.BYTES_PER_PROGRAM}, no_fma),
        # aligned weight (K % blocksize == 0), tile no wider than a block: one absmax a row (decode tiles)
        ("nf4_matmul", nf4_matmul._nf4_matmul_kernel, matmul, {**quant, "ALIGNED": True, "HAS_BIAS": True, "BM": 16,
                                                               "BN": 64, "BK": 64}, {**no_fma, "num_stages": 4}),
        # any shape: the flat element index per element
        ("nf4_matmul_unaligned", nf4_matmul._nf4_matmul_kernel, matmul,
         {**quant, "ALIGNED": False, "HAS_BIAS": False, "BM": 64, "BN": 64, "BK": 64}, no_fma),
        # aligned, training tiles
        ("nf4_matmul_grad_x", nf4_matmul._nf4_grad_x_kernel,
         {"g_ptr": t, **nf4_state, "gx_ptr": t, "M": i32, "N": i32, "K": i32, "stride_gm": i32, "stride_gn": i32,
          **dict.fromkeys(quant, c), "ALIGNED": c, "BM": c, "BN": c, "BK": c},
         {**quant, "ALIGNED": True, "BM": 64, "BN": 64, "BK": 64}, no_fma),
        ("bgmv_shrink", bgmv._bgmv_shrink_kernel,
         {"x_ptr": t, "a_ptr": t, "idx_ptr": i64, "v_ptr": t, "R": i32, "D": i32, "stride_xt": i32,
          "stride_xd": i32, "stride_an": i32, "stride_ar": i32, "stride_ad": i32, "BR": c, "BK": c},
         {"BR": 16, "BK": 256}, no_fma),
        ("bgmv_expand", bgmv._bgmv_expand_kernel,
         {"v_ptr": t, "b_ptr": t, "idx_ptr": i64, "y_ptr": t, "R": i32, "N": i32, "stride_vt": i32,
          "stride_vr": i32, "stride_bn": i32, "stride_bo": i32, "stride_br": i32, "BN": c, "BR": c},
         {"BN": 128, "BR": 16}, no_fma),
        ("sgmv", bgmv._sgmv_kernel,
         {"x_ptr": t, "w_ptr": t, "starts_ptr": i64, "ends_ptr": i64, "slots_ptr": i64, "out_ptr": t, "N": i32,
          "D": i32, "stride_xt": i32, "stride_xd": i32, "stride_wn": i32, "stride_wo": i32, "stride_wd": i32, "BM": c,
          "BN": c, "BK": c}, {"BM": 64, "BN": 16, "BK": 64}, no_fma),
    ]


def compile_all(arch: int = 90, dtype: str = "bf16", only: tuple[str, ...] = (),
                fp_fusion: bool | None = None) -> dict[str, dict[str, object]]:
    """Compile every kernel (or those named in ``only``) for ``sm_<arch>``; ``{name: {"seconds", "ptx_lines",
    "fma"}}`` (``fma``: ``fma.rn.f32`` instructions in the PTX). ``fp_fusion`` overrides the launch option
    (``None``: as the kernels are launched, fusion off). Raises RuntimeError in an interpreting process."""
    from lorakit.kernels._triton import import_triton, interpreting

    triton = import_triton()
    if interpreting():
        raise RuntimeError("the kernels were imported for the interpreter in this process; run "
                           "`TRITON_INTERPRET=0 python -m lorakit.kernels.aot` in a process of its own")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    report = {}
    for name, kernel, signature, constexprs, options in kernel_signatures(dtype):
        if only and name not in only:
            continue
        if fp_fusion is not None:
            options = {**options, "enable_fp_fusion": fp_fusion}
        start = time.perf_counter()
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=target,
                                  options=options)
        ptx = compiled.asm["ptx"]
        report[name] = {"seconds": time.perf_counter() - start, "ptx_lines": ptx.count("\n"),
                        "fma": ptx.count("fma.rn.f32")}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: H100/H200)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    parser.add_argument("--only", nargs="+", default=[], help="kernel names (default: all)")
    parser.add_argument("--fp-fusion", choices=("on", "off"), default=None,
                        help="override the launch option (default: as launched, off)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_INTERPRET", "0")
    fusion = None if args.fp_fusion is None else args.fp_fusion == "on"
    for name, info in compile_all(args.arch, args.dtype, tuple(args.only), fusion).items():
        print(f"{name}: compiled for sm_{args.arch} in {info['seconds']:.1f} s, {info['ptx_lines']} PTX lines, "
              f"{info['fma']} fma.rn.f32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
