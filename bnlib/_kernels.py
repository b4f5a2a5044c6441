"""Fast numpy kernels behind :mod:`bnlib.functional` (private).

The arithmetic is the textbook's, step for step; only the way numpy is driven
differs. Four things make it fast (measured with ``benchmarks/bench_batchnorm.py``
on (4096, 1024) and (64, 64, 32, 32) float32):

1. Per-channel sums make no temporary: ``add.reduce`` over the rows of an
   ``(n, C)`` layout, ``vecdot(x, ones)`` along the contiguous axis of an
   ``(A, C, B)`` layout; ``sum(a * b)`` is ``einsum`` or ``vecdot``. (Not
   ``ones @ x``: BLAS may start threads, which is slower on a busy machine.)
2. A per-channel vector is not broadcast row by row (numpy then calls its
   inner loop once per short row, about twice as slow as an operation on two
   equal-shaped arrays). It is expanded once into a small "tile" covering
   several whole samples, and the array is viewed as long rows of that
   length, so that every ufunc call runs its fastest loop over long
   contiguous rows. The tile is at most :data:`_TILE_MAX` elements.
3. The long rows are cut into blocks of about :data:`_BLOCK` bytes, and each
   chain of element-wise steps (e.g. ``xhat *= s; out = xhat * g; out += b``)
   runs on one block at a time, while it is in cache.
4. Sums are taken block by block too, in the pass that already has the block
   in cache: the sum of squares of the centred input right after centring it
   (:func:`center_sumsq`), ``sum(g)`` and ``sum(g * xhat)`` together
   (:func:`grad_sums`). Forward + backward make 12 ufunc calls per element,
   which read an input-sized array from memory 7 times and write one 4 times
   (xhat twice, out, dx); the rest run on a block in cache. The per-block
   partial sums are added at the end (two-level summation), so float32 sums
   over thousands of rows err about ten times less than one running sum down
   the rows.

Memory: no input-sized temporary; the large arrays are the ones the caller
passes in to be filled.
"""

from __future__ import annotations

import numpy as np

# Elements of a tile: long enough that numpy's per-row overhead vanishes,
# small enough to stay in cache.
_TILE_MIN = 1 << 14
_TILE_MAX = 1 << 16
# Bytes of one block of long rows: a chain of operations (two or three
# ufunc calls) runs on one block while it is in the L2 cache.
_BLOCK = 1 << 18

_vecdot = getattr(np, "vecdot", None)  # numpy >= 2.0


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum(a * b, axis=-1)`` without a temporary."""
    if _vecdot is not None:
        return _vecdot(a, b)
    return np.einsum("...b,...b->...", a, b)


class Layout:
    """How to reduce over, and apply per-channel vectors to, an ``(A, C, B)`` array.

    Every array handed to one Layout must have the shape ``shape3``; ``arrays``
    are the inputs that will be read (outputs are allocated C-contiguous by
    the caller). With all of them C-contiguous, the element-wise methods use
    long rows and tiles; otherwise they fall back to plain broadcasting,
    which never copies.
    """

    def __init__(self, shape3, dtype, *arrays):
        A, C, B = shape3
        self.shape3 = shape3
        self.dtype = np.dtype(dtype)
        self.flat = B == 1
        sample = C * B
        # small arrays: broadcasting is cheaper than building tiles
        self.long_rows = A * sample >= _TILE_MIN and sample <= _TILE_MAX and all(a.flags.c_contiguous for a in arrays)
        if self.long_rows:
            r = max(1, min(A, -(-_TILE_MIN // sample)))  # samples per long row
            self.r, self.main = r, (A // r) * r  # samples in whole long rows
            long_rows = self.main // r
            self.block_rows = max(1, _BLOCK // (r * sample * self.dtype.itemsize))
            self.n_blocks = -(-long_rows // self.block_rows)

    # ------------------------------------------------------- reductions ----
    def channel_sum(self, a3: np.ndarray) -> np.ndarray:
        """Per-channel sum, shape (C,), in the array's dtype."""
        A, C, B = a3.shape
        if self.flat:  # row after row into one accumulator: one pass, no temporary
            return np.add.reduce(a3[:, :, 0], axis=0)
        return _rowdot(a3, np.ones(B, a3.dtype)).sum(axis=0)

    def samples(self, part: np.ndarray) -> np.ndarray:
        """A part from :meth:`parts` (whole samples) as an ``(a, C, B)`` view, to reduce over."""
        A, C, B = self.shape3
        return part.reshape(-1, C, B)

    def channel_dot(self, a3: np.ndarray, b3: np.ndarray) -> np.ndarray:
        """Per-channel ``sum(a * b)``, shape (C,), without a temporary."""
        if self.flat:
            return np.einsum("ac,ac->c", a3[:, :, 0], b3[:, :, 0])
        return _rowdot(a3, b3).sum(axis=0)

    # ------------------------------------------------ element-wise parts ----
    def parts(self, a3: np.ndarray):
        """``a3`` as views to operate on: blocks of long rows (then the leftover
        samples), or the array itself."""
        if not self.long_rows:
            return (a3[:, :, 0],) if self.flat else (a3,)
        A = a3.shape[0]
        rows = a3.reshape(A, -1)
        main = rows[: self.main].reshape(self.main // self.r, -1)
        k = self.block_rows
        blocks = tuple(main[i * k : (i + 1) * k] for i in range(self.n_blocks))
        return blocks + (rows[self.main :],) if self.main < A else blocks

    def tile(self, v: np.ndarray):
        """The (C,) vector ``v`` as operands matching :meth:`parts`, one per part."""
        A, C, B = self.shape3
        if not self.long_rows:
            return (v,) if self.flat else (v[:, None],)
        t = np.empty((self.r, C) if self.flat else (self.r, C, B), self.dtype)
        t[...] = v if self.flat else v[:, None]
        t = t.reshape(-1)
        return (t,) * self.n_blocks + ((t[: C * B],) if self.main < A else ())


def channel_mean(lay: Layout, x3) -> np.ndarray:
    """Per-channel mean of ``x3``, shape (C,): block sums, then their sum."""
    A, C, B = lay.shape3
    total = np.zeros(C, lay.dtype)
    for part in lay.parts(x3):
        total += lay.channel_sum(lay.samples(part))
    return total / lay.dtype.type(A * B)


def center_sumsq(lay: Layout, x3, mean, xc3) -> np.ndarray:
    """``xc3 = x3 - mean``; returns the per-channel ``sum(xc3**2)``, shape (C,),
    each block's share taken while the block is in cache."""
    total = np.zeros(lay.shape3[1], lay.dtype)
    for x, m, c in zip(lay.parts(x3), lay.tile(mean), lay.parts(xc3), strict=True):
        np.subtract(x, m, out=c)
        c = lay.samples(c)
        total += lay.channel_dot(c, c)
    return total


def scale_affine(lay: Layout, xhat3, inv_std, gamma, beta, out3) -> None:
    """``xhat3 *= inv_std`` (centred input -> xhat), then ``out3 = xhat3 * gamma + beta``."""
    for h, s, g, b, o in zip(lay.parts(xhat3), lay.tile(inv_std), lay.tile(gamma), lay.tile(beta), lay.parts(out3), strict=True):
        np.multiply(h, s, out=h)
        np.multiply(h, g, out=o)
        np.add(o, b, out=o)


def grad_sums(lay: Layout, g3, xhat3):
    """Per-channel ``(sum(g3), sum(g3 * xhat3))``, each shape (C,), in one pass
    over both arrays."""
    C = lay.shape3[1]
    sum_g, sum_gx = np.zeros(C, lay.dtype), np.zeros(C, lay.dtype)
    for g, h in zip(lay.parts(g3), lay.parts(xhat3), strict=True):
        g = lay.samples(g)
        sum_g += lay.channel_sum(g)
        sum_gx += lay.channel_dot(g, lay.samples(h))
    return sum_g, sum_gx


def grad_input(lay: Layout, g3, xhat3, mean_g, mean_gx, k, dx3) -> None:
    """``dx3 = k * (g3 - (xhat3 * mean_gx + mean_g))``."""
    for g, h, mg, mgx, kk, d in zip(
        lay.parts(g3), lay.parts(xhat3), lay.tile(mean_g), lay.tile(mean_gx), lay.tile(k), lay.parts(dx3), strict=True
    ):
        np.multiply(h, mgx, out=d)
        np.add(d, mg, out=d)
        np.subtract(g, d, out=d)
        np.multiply(d, kk, out=d)
