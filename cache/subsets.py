"""Nested, seeded subsets of a split: a 20 % cache also serves the 1 %, 5 % and 10 % runs."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def subset_size(split_size: int, fraction: float) -> int:
    """ceil(f*N) of the fraction as written (0.07 x 100 = 7), not of its binary float (which gives 8)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return min(split_size, max(1, math.ceil(Fraction(str(fraction)) * split_size)))


def subset_indices(split_size: int, fraction: float, seed: int) -> np.ndarray:
    """Dataset indices of the subset, sorted (HDF5 reads like ascending rows).

    The subset is the first ceil(f*N) entries of one seeded permutation of the split, so a smaller
    fraction is always contained in a larger one with the same seed.
    """
    perm = np.random.default_rng(seed).permutation(split_size)
    return np.sort(perm[: subset_size(split_size, fraction)]).astype(np.int64)


def rows_of_subset(file_index: np.ndarray, split_size: int, fraction: float, seed: int) -> np.ndarray:
    """Rows of a cached file (whose `index` is sorted) that hold the nested subset `fraction`.

    Items that the file lacks (skipped bad images) are left out, the same way for every encoder.
    """
    wanted = subset_indices(split_size, fraction, seed)
    pos = np.searchsorted(file_index, wanted)
    pos = np.clip(pos, 0, max(len(file_index) - 1, 0))
    found = file_index[pos] == wanted if len(file_index) else np.zeros(len(wanted), bool)
    return pos[found]
