"""Morphological thinning to one-pixel-wide curves: MATLAB's ``bwmorph(bw, 'thin', inf)``.

The algorithm is Guo & Hall's first two-subiteration parallel thinning algorithm (Z. Guo and
R. W. Hall, "Parallel thinning with two-subiteration algorithms", Comm. ACM 32(3), 1989), in the
form given by the survey of Lam, Lee & Suen ("Thinning methodologies - a comprehensive survey",
IEEE TPAMI 14(9), 1992, p. 879), which is the description MATLAB's ``bwmorph 'thin'`` cites and
the BSDS boundary benchmark applies; scikit-image's ``thin`` uses the same tables. The survey is
where the description comes from, not a different algorithm. A pixel p is deleted when

- G1: the Hilditch crossing number X_H(p) = 1;
- G2: 2 <= min(n1(p), n2(p)) <= 3;
- G3 (first subiteration): (x2 or x3 or not x8) and x1 is false;
  G3' (second subiteration): (x6 or x7 or not x4) and x5 is false,

with neighbours x1..x8 counter-clockwise from east (x1 = E, x2 = NE, ..., x8 = SE). Pixels
outside the map count as background. Subiterations alternate until a full iteration deletes
nothing.

Speed: after the first pass only pixels next to a deleted pixel can change, so each
subiteration evaluates only those (an exact shortcut: a pixel whose 3x3 neighbourhood did not
change since the same table last kept it is kept again).
"""

from __future__ import annotations

import numpy as np

__all__ = ["thin", "thinning_tables"]

# (dy, dx) of neighbour bits 0..7 = x1..x8, counter-clockwise from east.
NEIGHBOUR_OFFSETS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables (256,) of the two subiterations, indexed by the 8-bit neighbourhood code.

    Bit i of the code is neighbour x_{i+1} (see the module docstring for G1, G2, G3 and G3').
    """
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        x = [bool((code >> i) & 1) for i in range(8)]

        def nb(i: int, x: list[bool] = x) -> bool:  # 1-based neighbour x_i, wrapping x9 = x1
            return x[(i - 1) % 8]

        crossing = sum(not nb(2 * i - 1) and (nb(2 * i) or nb(2 * i + 1)) for i in range(1, 5))
        n1 = sum(nb(2 * k - 1) or nb(2 * k) for k in range(1, 5))
        n2 = sum(nb(2 * k) or nb(2 * k + 1) for k in range(1, 5))
        g12 = crossing == 1 and 2 <= min(n1, n2) <= 3
        first[code] = g12 and not ((nb(2) or nb(3) or not nb(8)) and nb(1))
        second[code] = g12 and not ((nb(6) or nb(7) or not nb(4)) and nb(5))
    return first, second


_TABLES = thinning_tables()


def thin(maps: np.ndarray) -> np.ndarray:
    """Thin a binary map (H, W) or a stack of maps (..., H, W) to one-pixel-wide curves.

    Same result as ``bwmorph(map, 'thin', inf)`` applied to each map; returns a bool array.
    """
    maps = np.asarray(maps)
    if maps.ndim < 2:
        raise ValueError(f"thin: expected a map (H, W) or a stack (..., H, W), got shape {maps.shape}")
    shape = maps.shape
    h, w = shape[-2:]
    stack = maps.reshape(-1, h, w).astype(bool)
    # Chunks of about a million pixels keep the work arrays in cache.
    per_chunk = max(1, _CHUNK_PIXELS // ((h + 2) * (w + 2)))
    out = np.empty_like(stack)
    for start in range(0, len(stack), per_chunk):
        out[start : start + per_chunk] = _thin_stack(stack[start : start + per_chunk])
    return out.reshape(shape)


_CHUNK_PIXELS = 1 << 20


def _thin_stack(stack: np.ndarray) -> np.ndarray:
    """Thin a (N, H, W) bool stack, visiting only foreground pixels (see the module docstring)."""
    padded = np.pad(stack, ((0, 0), (1, 1), (1, 1)))  # background border: neighbours are offsets
    flat = padded.ravel()
    pixels = np.flatnonzero(flat)
    count = len(pixels)
    # Position of each foreground pixel's 8 neighbours in `pixels`, or `count`: a sentinel that
    # always reads as background.
    position = np.full(flat.size, count, dtype=np.int32)
    position[pixels] = np.arange(count)
    row = stack.shape[2] + 2
    neighbours = np.empty((count, 8), dtype=np.int32)
    for bit, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        neighbours[:, bit] = position[pixels + dy * row + dx]
    alive = np.ones(count + 1, dtype=bool)
    alive[count] = False
    pending = [np.ones(count + 1, dtype=bool), np.ones(count + 1, dtype=bool)]
    while True:
        deleted_any = False
        for sub, table in enumerate(_TABLES):
            check = np.flatnonzero(pending[sub] & alive)
            pending[sub][:] = False
            if check.size == 0:
                continue
            code = np.packbits(alive[neighbours[check]], axis=1, bitorder="little")[:, 0]
            delete = check[table[code]]
            if delete.size == 0:
                continue
            deleted_any = True
            alive[delete] = False
            touched = neighbours[delete].ravel()
            pending[0][touched] = True
            pending[1][touched] = True
        if not deleted_any:
            break
    flat[pixels[~alive[:count]]] = False
    return padded[:, 1:-1, 1:-1]
