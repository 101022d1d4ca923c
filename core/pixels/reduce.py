"""Step 2 of the conversion: area-average blocks of whole pixels (Pillow's reducing_gap).

Blocks of whole pixels are averaged down to about three times the model size (Pillow's
`reducing_gap` rule); pixels equal to the Pixel Padding Value are left out of the averages,
and colour becomes luminance (ITU-R BT.601 weights).

Averaging before the lookups is what keeps a 4,300 x 3,500 16-bit image cheap: the
full-resolution work is a range check and one pass of integer additions, in the stored
type where it has the headroom, and the lookups see a few hundred thousand values instead
of 15 million. Averaging commutes exactly with the linear steps;
for the non-linear ones (a clipping window, a sigmoid, a LUT table) the blocks are small
enough (at most a third of an output pixel) that edges stay where a full-resolution
rendering puts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Pillow's reducing_gap: whole-pixel block means down to at least this many times the
# output size, then a true antialiased resize. At 3 the result is indistinguishable from
# resampling the full image (Pillow documentation), at a fraction of the cost.
REDUCING_GAP = 3.0


@dataclass(frozen=True)
class Reduced:
    """Block means of one image, and where they sit in the final resize."""

    means: np.ndarray
    box: tuple[float, float, float, float]
    # Fraction of each block that is not padding; None when the image has no padding.
    coverage: np.ndarray | None = None


def _accumulator(dtype: np.dtype, bound: int, count: int) -> np.dtype:
    """The narrowest integer type that holds `count` values of magnitude `bound`.

    Summing in the stored type when it has the headroom (12-bit data in 16 bits) avoids
    numpy's casting loop, which costs three times the addition itself.
    """
    if dtype.kind == "f":
        return np.dtype(np.float64 if dtype.itemsize > 4 else np.float32)
    kind = "u" if dtype.kind in "ub" else "i"
    for itemsize in (1, 2, 4, 8):
        if itemsize < dtype.itemsize:
            continue
        candidate = np.dtype(f"{kind}{itemsize}")
        if bound * count <= np.iinfo(candidate).max:
            return candidate
    return np.dtype(np.float64)


def _magnitude(values: np.ndarray) -> int:
    """The largest absolute value the array may hold; a pass over the data unless the
    type alone bounds it closely enough."""
    if values.dtype.kind == "b":
        return 1
    if values.dtype.itemsize == 1:
        return int(np.iinfo(values.dtype).max) + int(values.dtype.kind == "i")
    if values.dtype.kind == "u":
        return int(values.max())
    return max(-int(values.min()), int(values.max()))


def _sum_rows(values: np.ndarray, factor: int, dtype: np.dtype) -> np.ndarray:
    """Sum each band of `factor` rows; a shorter last band keeps its own sum."""
    rows, columns = values.shape
    whole = rows // factor
    out = np.empty((-(-rows // factor), columns), dtype)
    if whole:
        bands = values[: whole * factor].reshape(whole, factor, columns)
        np.sum(bands, axis=1, dtype=dtype, out=out[:whole])
    if rows > whole * factor:
        np.sum(values[whole * factor :], axis=0, dtype=dtype, out=out[whole])
    return out


def _sum_columns(values: np.ndarray, factor: int, dtype: np.dtype) -> np.ndarray:
    """Sum each group of `factor` columns with strided additions, which numpy vectorises
    where a reduction over a short last axis does not."""
    rows, columns = values.shape
    whole = columns // factor
    out = np.empty((rows, -(-columns // factor)), dtype)
    if whole:
        head = out[:, :whole]
        np.copyto(head, values[:, 0 : whole * factor : factor], casting="safe")
        for offset in range(1, factor):
            np.add(head, values[:, offset : whole * factor : factor], out=head)
    if columns > whole * factor:
        np.sum(values[:, whole * factor :], axis=1, dtype=dtype, out=out[:, whole])
    return out


def _block_means(sums: np.ndarray, shape: tuple[int, int], factors: tuple[int, int]) -> np.ndarray:
    """Divide by the block areas; only the last row and column of blocks may be partial."""
    means = sums.astype(np.float32)
    means *= np.float32(1.0 / (factors[0] * factors[1]))
    if shape[0] % factors[0]:
        means[-1, :] *= np.float32(factors[0] / (shape[0] % factors[0]))
    if shape[1] % factors[1]:
        means[:, -1] *= np.float32(factors[1] / (shape[1] % factors[1]))
    return means


def _block_sums(
    values: np.ndarray, factors: tuple[int, int], magnitude: int | None = None
) -> np.ndarray:
    factor_y, factor_x = factors
    if values.dtype.kind == "f":
        magnitude = 0
    elif magnitude is None:
        magnitude = _magnitude(values)
    rows = _sum_rows(values, factor_y, _accumulator(values.dtype, magnitude, factor_y))
    return _sum_columns(rows, factor_x, _accumulator(rows.dtype, magnitude * factor_y, factor_x))


def _factors(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    """The same integer reduction Pillow's resize(reducing_gap=...) would choose."""
    return (
        max(1, int(shape[0] / size / REDUCING_GAP)),
        max(1, int(shape[1] / size / REDUCING_GAP)),
    )


def reduce(
    values: np.ndarray,
    size: int,
    padding: np.ndarray | None = None,
    magnitude: int | None = None,
) -> Reduced:
    """Block means of a 2-D array; `padding` marks pixels left out of the means, and
    `magnitude`, when the caller knows it, saves a pass over the data."""
    rows, columns = values.shape
    factors = _factors(values.shape, size)
    box = (0.0, 0.0, columns / factors[1], rows / factors[0])
    if padding is None:
        if factors == (1, 1):
            return Reduced(values.astype(np.float32), box)
        sums = _block_sums(values, factors, magnitude)
        return Reduced(_block_means(sums, values.shape, factors), box)
    kept = ~padding
    sums = _block_sums(np.where(kept, values, 0), factors, magnitude).astype(np.float64)
    counts = _block_sums(kept, factors).astype(np.float64)
    means = np.divide(sums, counts, out=np.zeros(counts.shape), where=counts > 0)
    coverage = _block_means(counts, values.shape, factors)
    return Reduced(means.astype(np.float32), box, coverage)


def reduce_colour(rgb: np.ndarray, size: int) -> Reduced:
    """Luminance is linear, so it is taken of the block means rather than of every pixel."""
    channels = [reduce(rgb[..., c], size) for c in range(3)]
    luminance = sum(w * ch.means for w, ch in zip(LUMA_WEIGHTS, channels, strict=True))
    return Reduced(np.asarray(luminance, dtype=np.float32), channels[0].box)
