"""Vectorizable float64 ``exp`` and ``log`` for the compiled CPU kernels of :mod:`toy_lm.engines.cpu_kernels`.

Why. Numba lowers ``math.exp`` / ``math.log`` to calls into the C library, one element at a time
(about 8-13 ns per call on the 2-core CPU this project is tested on), and the full tree analysis
needs two ``exp`` per table entry. The two functions below are written with plain arithmetic and
bit casts only, so LLVM vectorizes loops that call them (AVX2: four doubles at a time; about 3 ns per
element, measured). They are inlined into the kernels.

Accuracy (checked over ``2**20`` random arguments per range in ``tests/test_fastmath.py``, against
numpy):

* :func:`fexp`: at most 1 ulp from the correctly rounded result for normal results; ``fexp(0) == 1``
  exactly; arguments below ``-746`` give ``0.0`` and subnormal results are within one subnormal
  step (``5e-324``) of numpy's; arguments are clamped to ``<= 709.7`` (the kernels only pass
  arguments ``<= 0``).
  Method: ``exp(x) = 2**k exp(r)`` with ``k = round(x / ln 2)``, ``r = x - k ln 2`` in two parts
  (Cody-Waite, the split of fdlibm), ``|r| <= ln(2)/2``, and the degree-13 Taylor polynomial of
  ``exp(r)`` (truncation ``< 0.35**14 / 14! ~ 4e-18``, well below half an ulp); ``2**k`` is built
  from the exponent bits, as two factors so that subnormal results come out right.
* :func:`flog`: at most 3 ulp for positive arguments, subnormal ones included (``log(1) == 0``
  exactly, ``flog(0) == -inf``).
  Method: ``x = 2**e m`` with ``m`` in ``[sqrt(1/2), sqrt(2))``, ``log m = 2 atanh(s)``,
  ``s = (m - 1) / (m + 1)``, ``|s| <= 0.172``, series to ``s**25`` (truncation
  ``< 0.172**26 / 27 ~ 5e-22``); ``e ln 2`` in the same two parts.

Both avoid integer/float conversions (AVX2 has no packed 64-bit integer <-> double conversion,
which would stop the vectorizer): integers are moved through the mantissa of ``1.5 * 2**52``.
Neither is meant for NaN or infinite arguments, nor ``flog`` for negative ones; the kernels never
pass them (inputs are validated finite, and the logarithms are of sums of non-negative terms).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba.core import types
from numba.extending import intrinsic

__all__ = ["KERNEL_FASTMATH", "exp_array", "fexp", "flog", "log_array"]

#: The floating-point relaxations the kernels are compiled with (and the test wrappers below, so
#: that the accuracy tests see the code the kernels run): fused multiply-add, reciprocal
#: multiplication, no signed zeros. Not ``reassoc``: it lets LLVM merge the two-part reduction
#: ``(x - k ln2_hi) - k ln2_lo`` and costs ``fexp`` its accuracy (tests/test_fastmath.py fails
#: with it); NaN and infinity handling stay strict.
KERNEL_FASTMATH = {"contract", "arcp", "nsz"}


@intrinsic
def _bits_to_float(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return types.float64(types.int64), codegen


@intrinsic
def _float_to_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return types.int64(types.float64), codegen


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # fdlibm's split of ln 2: _LN2_HI * k is exact for |k| < 2**20
_LN2_LO = 1.90821492927058770002e-10
_MAGIC = 6755399441055744.0  # 1.5 * 2**52: k + _MAGIC holds the integer k in its low bits
_TWO52 = 4503599627370496.0
_SQRT2 = 1.4142135623730951
_TWO54 = 18014398509481984.0
_MIN_NORMAL = 2.2250738585072014e-308


@nb.njit(inline="always", error_model="numpy")
def _pow2(k):
    """``2.0**k`` for an integer-valued float ``k`` in ``[-1022, 1023]``."""
    return _bits_to_float(_float_to_bits(k + (1023.0 + _MAGIC)) << 52)


@nb.njit(inline="always", error_model="numpy")
def fexp(x):
    """``exp(x)`` within 1 ulp, vectorizable (see the module docstring)."""
    x = min(max(x, -746.0), 709.7)
    k = np.floor(x * _LOG2E + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    half = np.floor(k * 0.5)
    return p * _pow2(half) * _pow2(k - half)


@nb.njit(inline="always", error_model="numpy")
def flog(x):
    """``log(x)`` for a finite ``x >= 0``, within 3 ulp, vectorizable; ``flog(0) == -inf``."""
    tiny = x < _MIN_NORMAL  # subnormal: scale by 2**54 first
    y = x * _TWO54 if tiny else x
    bits = _float_to_bits(y)
    e = _bits_to_float((bits >> 52) | 0x4330000000000000) - (_TWO52 + 1023.0)
    e = e - 54.0 if tiny else e
    m = _bits_to_float((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    f = m - 1.0
    s = f / (2.0 + f)
    s2 = s * s
    p = 1.0 / 25.0
    p = p * s2 + 1.0 / 23.0
    p = p * s2 + 1.0 / 21.0
    p = p * s2 + 1.0 / 19.0
    p = p * s2 + 1.0 / 17.0
    p = p * s2 + 1.0 / 15.0
    p = p * s2 + 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    result = e * _LN2_HI + (2.0 * s * (1.0 + s2 * p) + e * _LN2_LO)
    return -np.inf if x == 0.0 else result


@nb.njit(error_model="numpy", cache=True, fastmath=KERNEL_FASTMATH)
def exp_array(x, out):
    """``out[i] = fexp(x[i])`` (for tests and benchmarks)."""
    for i in range(x.size):
        out[i] = fexp(x[i])


@nb.njit(error_model="numpy", cache=True, fastmath=KERNEL_FASTMATH)
def log_array(x, out):
    """``out[i] = flog(x[i])`` (for tests and benchmarks)."""
    for i in range(x.size):
        out[i] = flog(x[i])
