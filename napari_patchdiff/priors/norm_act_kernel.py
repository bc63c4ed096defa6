"""Fused CPU kernel for the GroupNorm + FiLM + SiLU of the U-Net (numba), used in bfloat16 and
float32.

:func:`~napari_patchdiff.priors.network.norm_act` in bfloat16 on the CPU is bound by memory
and by calls, not arithmetic: PyTorch makes an upcast copy for the sums, then a multiply-add
pass and a SiLU pass over the whole batch, each a separate trip through memory, and its bfloat16
SiLU converts every value to float32 and back. Here one compiled kernel does, for each sample
(the samples spread over the threads):

1. the per-channel sums of ``x`` and ``x^2`` in float32 (in blocks of 64 pixels, then summed:
   two-level summation), the group mean and variance in float64 from them;
2. one multiply-add per channel that folds the normalisation, the GroupNorm affine and the
   FiLM ``(1 + scale), shift`` into ``a x + b`` (``a, b`` kept in float32, where the PyTorch
   path rounds them to bfloat16);
3. ``silu(a x + b)`` in float32 and one rounding to ``x``'s dtype (bfloat16: to nearest, ties
   to even).

A sample's values are read twice while they are still in the core's cache (600 KiB at most for
the shipped networks) instead of five passes over the whole batch. The exponential of the SiLU
is ``2^k 2^f``: ``k`` an integer put into the float's exponent bits, ``2^f`` (``|f| <= 1/2``) a
degree-6 Taylor polynomial of ``e^(f ln 2)`` (relative error below 2e-7, about one float32
rounding, far below bfloat16's 4e-3), so that the loop vectorises; the division is a true
division. No fast-math assumption about NaN or infinity is made, so a NaN stays a NaN.

One assembled evaluation of the shipped ``ct`` prior (25 patches of 56 x 56) ran 1.33-1.37x as
fast with it in bfloat16 on 1 and 2 threads of a 2-core CPU with AMX, and 1.09-1.11x in float32
(``benchmarks/results/norm_act_threads.md``); in float32 on a 2-core AVX2 CPU without bfloat16
1.23x (``benchmarks/results/precision_nobf16.md``), so :mod:`.network` uses it for both.

Importing this module imports numba and compiles the kernel on its first call (a few seconds;
numba caches it on disk next to this file, or in its user cache where that is read-only);
:mod:`.network` imports it lazily, on the first CPU evaluation outside autograd, and falls back to
its PyTorch path when numba is missing. The kernel runs on as many threads as
``torch.get_num_threads()``, on numba's OpenMP layer where it loads (see ``_LOCK`` below); its
results do not depend on that number (each sample is summed in a fixed order). Written for
this project; the bfloat16 format (the upper 16 bits of a float32) and the exponent
construction are standard facts.
"""
from __future__ import annotations

import os
import threading

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import intrinsic, overload

__all__ = ["norm_act_cpu", "DTYPES"]

if numba.config.DISABLE_JIT:  # the kernel would run as Python, element by element
    raise ImportError("numba's JIT is disabled (NUMBA_DISABLE_JIT): the fused norm_act kernel "
                      "is not used")

#: the dtypes the kernel takes
DTYPES = (torch.bfloat16, torch.float32)

_LOCK = threading.Lock()  # numba's fallback pool (workqueue) must not be entered twice
# numba's OpenMP layer first, unless the user chose a layer (NUMBA_THREADING_LAYER or _PRIORITY):
# on Linux it is the same GNU OpenMP runtime as PyTorch's, so the kernel runs on the threads
# PyTorch's operations just left. numba's own pool (workqueue) competed with those threads for
# the cores: on two threads the kernel then made an evaluation slower than PyTorch's path alone
# (TBB, another pool, was not tried). Launching the OpenMP layer sets the runtime's thread count
# to numba's, and so torch's: restored after each call.
if (numba.config.THREADING_LAYER == "default"
        and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ):
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
# reassociation (vectorised sums) and contraction (fused multiply-adds); no 'nnan' or 'ninf'
_OPTS = dict(fastmath={"reassoc", "contract", "nsz", "arcp"}, error_model="numpy")
_F32, _U32 = np.float32, np.uint32


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret a uint32 as a float32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.uint32), codegen


@intrinsic
def _bits_of_f32(typingctx, value):
    """Reinterpret a float32 as a uint32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))
    return types.uint32(types.float32), codegen


def _load(value):
    """The float32 value of an element of ``x`` (bfloat16 bits as uint16, or float32)."""


def _store(value, out):
    """``value`` (float32) as an element of ``out`` (bfloat16 bits as uint16, or float32)."""


@overload(_load, inline="always", fastmath=_OPTS["fastmath"])
def _load_impl(value):
    if isinstance(value, types.Float):
        return lambda value: value
    return lambda value: _f32_from_bits(_U32(value) << _U32(16))  # bfloat16 -> float32: exact


@overload(_store, inline="always", fastmath=_OPTS["fastmath"])
def _store_impl(value, out):
    if isinstance(out.dtype, types.Float):
        return lambda value, out: value

    def narrow(value, out):  # float32 -> bfloat16, rounded to nearest, ties to even
        w = _bits_of_f32(value)
        return np.uint16((w + _U32(0x7FFF) + ((w >> _U32(16)) & _U32(1))) >> _U32(16))
    return narrow


@njit(inline="always", **_OPTS)
def _silu(z):
    """``z / (1 + exp(-z))`` with ``exp(-z) = 2^t``, ``t = -z log2(e) = k + f``."""
    t = min(max(-z * _F32(1.4426950408889634), _F32(-126.0)), _F32(126.0))
    k = np.floor(t + _F32(0.5))
    g = (t - k) * _F32(0.6931471805599453)
    p = _F32(1.0) + g * (_F32(1.0) + g * (_F32(0.5) + g * (_F32(1.0 / 6.0) + g * (
        _F32(1.0 / 24.0) + g * (_F32(1.0 / 120.0) + g * _F32(1.0 / 720.0))))))
    two_k = _f32_from_bits(_U32(np.int32(k) + np.int32(127)) << _U32(23))
    return z / (_F32(1.0) + p * two_k)


@njit(parallel=True, cache=True, **_OPTS)
def _kernel(x, weight, bias, scale, shift, film, groups, eps, out):
    """``x``, ``out``: (N, H W, C) bfloat16 bits (uint16) or float32; ``weight, bias`` (C,) and
    ``scale, shift`` (N, C) (read only when ``film``) float32."""
    n, m, c = x.shape
    per = c // groups
    for i in prange(n):
        # 1. per-channel sums, blocks of 64 pixels
        s1 = np.zeros(c, np.float32)
        s2 = np.zeros(c, np.float32)
        b1 = np.zeros(c, np.float32)
        b2 = np.zeros(c, np.float32)
        for p in range(m):
            for j in range(c):
                v = _load(x[i, p, j])
                b1[j] += v
                b2[j] += v * v
            if (p & 63) == 63 or p == m - 1:
                for j in range(c):
                    s1[j] += b1[j]
                    s2[j] += b2[j]
                    b1[j] = 0.0
                    b2[j] = 0.0
        # 2. group statistics -> one multiply-add per channel
        ca = np.empty(c, np.float32)
        cb = np.empty(c, np.float32)
        for gi in range(groups):
            mean = 0.0
            square = 0.0
            for j in range(gi * per, (gi + 1) * per):
                mean += np.float64(s1[j])
                square += np.float64(s2[j])
            mean /= per * m
            rstd = 1.0 / np.sqrt(max(square / (per * m) - mean * mean, 0.0) + eps)
            for j in range(gi * per, (gi + 1) * per):
                a = rstd * weight[j]
                b = bias[j] - mean * a
                if film:
                    gain = 1.0 + scale[i, j]
                    a, b = a * gain, b * gain + shift[i, j]
                ca[j] = a
                cb[j] = b
        # 3. SiLU of the multiply-add (rounded once, to bfloat16 or float32)
        for p in range(m):
            for j in range(c):
                out[i, p, j] = _store(_silu(_load(x[i, p, j]) * ca[j] + cb[j]), out)


def _array(t: torch.Tensor) -> np.ndarray:
    """A contiguous CPU tensor's memory as numpy (bfloat16 as its uint16 bit patterns)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def norm_act_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                 eps: float, scale: torch.Tensor | None = None,
                 shift: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(group_norm(x, groups, weight, bias, eps) * (1 + scale) + shift)`` for a
    channels-last bfloat16 or float32 CPU tensor ``x`` (N, C, H, W) (``scale, shift``
    (N, C, 1, 1), or None for none); returns a new channels-last tensor of ``x``'s dtype. No
    autograd."""
    n, c, h, w = x.shape
    if x.dtype not in DTYPES or x.device.type != "cpu" or c % groups:
        raise ValueError("norm_act_cpu takes a bfloat16 or float32 CPU tensor whose channels "
                         "the groups divide")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("norm_act_cpu takes a channels-last tensor")
    out = torch.empty_like(x)  # channels-last, as x
    film = scale is not None

    def f32(t, shape):
        return t.detach().reshape(shape).to(torch.float32).contiguous().numpy()

    sc = f32(scale, (n, c)) if film else np.zeros((1, c), np.float32)
    sh = f32(shift, (n, c)) if film else np.zeros((1, c), np.float32)
    threads = torch.get_num_threads()
    with _LOCK:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        _kernel(_array(x.permute(0, 2, 3, 1).view(n, h * w, c)), f32(weight, (c,)),
                f32(bias, (c,)), sc, sh, film, int(groups), float(eps),
                _array(out.permute(0, 2, 3, 1).view(n, h * w, c)))
    if torch.get_num_threads() != threads:  # an OpenMP layer reset the shared runtime's count
        torch.set_num_threads(threads)
    return out
