"""Maximum one-to-one matchings between predicted and ground-truth boundary pixels, grown by level.

The graph joins each candidate (a predicted pixel, a "row") to the ground-truth pixels ("cols")
within the matching radius. ``GrowingMatching`` keeps a maximum matching of the rows present so
far and grows it when rows are added (or drops rows, for maps that are not nested):

1. new rows take a free neighbouring column directly (vectorised greedy rounds);
2. the rest are sources of augmenting paths: one C-level breadth-first search from all of them
   along the alternating graph (row -> its columns, column -> its matched row) gives a tree in
   which the paths from different sources share no vertex, so one shortest path to a free column
   per source is flipped at once; after a few such rounds, a unit-capacity max flow (Dinic,
   ``scipy.sparse.csgraph.maximum_flow``) on the region still reached finishes the job;
3. when rows are only ever added (nested thresholds), a region from which a source found no
   augmenting path holds no free column and never will: it is marked dead and skipped from then
   on (a later augmenting path cannot enter it, so its matching and its reach stay as they are).

Each step keeps a maximum matching of the rows present, so the matched count at every level is
exact (Berge's theorem: a matching is maximum iff no augmenting path exists).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

__all__ = ["GrowingMatching", "pairs_within"]


def pairs_within(points: np.ndarray, id_map: np.ndarray, radius_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (point, id) pairs at Euclidean distance <= the image's radius.

    ``points`` (N, 3) holds (image, y, x), usually the few ground-truth pixels; ``id_map``
    (B, H, W) the index of the other set's pixel or -1; ``radius_sq`` (B,) the squared radius per
    image. Scans the integer offsets of the largest disc, vectorised over the points.
    """
    if len(points) == 0 or radius_sq.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    b, y, x = points.T
    _, h, w = id_map.shape
    reach = int(np.floor(np.sqrt(radius_sq.max())))
    point_r2 = radius_sq[b]
    sources, targets = [], []
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            y2, x2 = y + dy, x + dx
            ok = (dy * dy + dx * dx <= point_r2) & (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w)
            idx = np.flatnonzero(ok)
            found = id_map[b[idx], y2[idx], x2[idx]]
            hit = found >= 0
            sources.append(idx[hit])
            targets.append(found[hit])
    return np.concatenate(sources), np.concatenate(targets)


def _ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(start, stop)`` of every pair, and the pair each element comes from."""
    lengths = stops - starts
    owner = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return starts[owner] + offsets, owner


class GrowingMatching:
    """A maximum matching of the rows added so far, in a fixed bipartite graph (rows -> cols).

    ``indptr``/``cols``: the graph in CSR form (row r's columns: ``cols[indptr[r]:indptr[r + 1]]``);
    ``nested``: rows are only added, never removed, which allows dead-region pruning;
    ``tree_rounds``: breadth-first augmenting rounds per ``add`` before the max flow finishes.
    """

    def __init__(
        self,
        indptr: np.ndarray,
        cols: np.ndarray,
        num_cols: int,
        nested: bool,
        tree_rounds: int = 4,
    ) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.num_rows = len(self.indptr) - 1
        self.num_cols = num_cols
        self.nested = nested
        self.tree_rounds = tree_rounds
        self.row_mate = np.full(self.num_rows, -1, dtype=np.int64)
        self.col_mate = np.full(num_cols, -1, dtype=np.int64)
        self.dead_col = np.zeros(num_cols, dtype=bool)
        self.present = np.zeros(self.num_rows, dtype=bool)
        self._ones = np.ones(len(self.cols) + num_cols + self.num_rows)
        # Graph of step 2 over nodes [rows, cols, source]; its col -> row slots change in place.
        self._search_indices = np.concatenate(
            [self.cols + self.num_rows, np.zeros(num_cols + self.num_rows, np.int64)]
        ).astype(np.int32)

    def _edges(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(owner position in ``rows``, col) of every edge of ``rows``."""
        edge, owner = _ranges(self.indptr[rows], self.indptr[rows + 1])
        return owner, self.cols[edge]

    def add(self, rows: np.ndarray) -> None:
        """Add ``rows`` and restore a maximum matching of the rows present.

        Nested: every augmenting path starts at a new row. Otherwise rows removed since the last
        call may have freed columns, so every unmatched present row is a source.
        """
        rows = np.asarray(rows, dtype=np.int64)
        self.present[rows] = True
        if self.nested:
            self._augment(rows[self.row_mate[rows] < 0])
        else:
            self._augment(np.flatnonzero(self.present & (self.row_mate < 0)))

    def remove(self, rows: np.ndarray) -> None:
        """Take ``rows`` out of the graph, freeing their columns (only when not ``nested``)."""
        if self.nested:
            raise ValueError("GrowingMatching: rows cannot be removed from a nested matching")
        rows = np.asarray(rows, dtype=np.int64)
        self.present[rows] = False
        matched = rows[self.row_mate[rows] >= 0]
        self.col_mate[self.row_mate[matched]] = -1
        self.row_mate[matched] = -1

    def matched_rows(self) -> np.ndarray:
        """Indices of the rows matched now."""
        return np.flatnonzero(self.row_mate >= 0)

    def _augment(self, sources: np.ndarray) -> None:
        """Match as many of the unmatched ``sources`` as a maximum matching allows."""
        if self.nested and len(sources):
            owner, col = self._edges(sources)
            alive = np.bincount(owner[~self.dead_col[col]], minlength=len(sources)) > 0
            sources = sources[alive]  # rows whose columns are all dead can never match
        self._greedy(sources)
        rest = sources[self.row_mate[sources] < 0]
        rounds = 0
        while len(rest):
            order, parent = self._search(rest)
            if rounds == self.tree_rounds:
                self._max_flow_in_region(rest, order[1:])
                rest = rest[self.row_mate[rest] < 0]
                if len(rest):
                    order, parent = self._search(rest)
                break
            if not self._augment_along_tree(order, parent):
                break
            rounds += 1
            rest = rest[self.row_mate[rest] < 0]
        if self.nested and len(rest):  # no augmenting path from `rest`: it reaches no free column
            region = order[1:]
            self.dead_col[region[region >= self.num_rows] - self.num_rows] = True

    def _augment_along_tree(self, order: np.ndarray, parent: np.ndarray) -> bool:
        """Flip one shortest tree path to a free column per source; False if none was reached.

        In the breadth-first tree, paths from different sources share no vertex, so all flips
        are valid at once. A tree path alternates: row -> col by a non-matching edge, col -> row
        by the column's matching edge.
        """
        n_rows, root = self.num_rows, len(parent) - 1
        cols = order[(order >= n_rows) & (order < root)]
        cols = cols[self.col_mate[cols - n_rows] < 0]
        if not len(cols):
            return False
        path = np.arange(len(cols))
        source_of = np.empty(len(cols), dtype=np.int64)
        steps = []
        current = cols
        while len(current):
            row = parent[current]
            steps.append((path, row, current - n_rows))
            above = parent[row]
            at_source = above == root
            source_of[path[at_source]] = row[at_source]
            path, current = path[~at_source], above[~at_source]
        chosen = np.zeros(len(cols), dtype=bool)
        chosen[np.unique(source_of, return_index=True)[1]] = True  # first = shortest per source
        for path, row, col in steps:
            keep = chosen[path]
            self.row_mate[row[keep]] = col[keep]
            self.col_mate[col[keep]] = row[keep]
        return True

    def _greedy(self, sources: np.ndarray) -> None:
        """Rounds of: each unmatched source proposes its first free column, each column takes
        one proposer. Cheap, and leaves only the harder sources to the max flow."""
        waiting = sources
        while len(waiting):
            owner, col = self._edges(waiting)
            free = self.col_mate[col] < 0
            owner, col = owner[free], col[free]
            if not len(owner):
                break
            first_edge = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
            proposer, wanted = owner[first_edge], col[first_edge]
            taken_col, first = np.unique(wanted, return_index=True)
            winner = waiting[proposer[first]]
            self.row_mate[winner] = taken_col
            self.col_mate[taken_col] = winner
            waiting = np.unique(waiting[proposer])  # sources that had a free column
            waiting = waiting[self.row_mate[waiting] < 0]

    def _search(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Breadth-first search from ``sources`` along row -> its columns and column -> its
        matched row (dead columns lead nowhere). Nodes are rows, then cols offset by num_rows,
        then the root joined to every source; returns (nodes in visiting order, parent)."""
        n_rows, n_cols = self.num_rows, self.num_cols
        n_edges = len(self.cols)
        follow = (self.col_mate >= 0) & ~self.dead_col
        n_follow = int(follow.sum())
        nnz = n_edges + n_follow + len(sources)
        indices = self._search_indices
        indices[n_edges : n_edges + n_follow] = self.col_mate[follow]
        indices[n_edges + n_follow : nnz] = sources
        indptr = np.concatenate([self.indptr, n_edges + np.cumsum(follow), [nnz]]).astype(np.int32)
        size = n_rows + n_cols + 1
        graph = csr_array((self._ones[:nnz], indices[:nnz], indptr), shape=(size, size))
        return breadth_first_order(graph, size - 1, directed=True, return_predecessors=True)

    def _max_flow_in_region(self, sources: np.ndarray, region: np.ndarray) -> None:
        """Max flow on the nodes ``region`` found by a search from ``sources`` just before."""
        cols = region[region >= self.num_rows] - self.num_rows
        cols = cols[~self.dead_col[cols]]
        if (self.col_mate[cols] >= 0).all():
            return  # no free column reached: no augmenting path
        self._max_flow(sources, region[region < self.num_rows], cols)

    def _max_flow(self, sources: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
        """Augment along a maximum set of vertex-disjoint augmenting paths inside the region.

        Network: S -> sources, row -> col (non-matching edges), col -> its matched row,
        free col -> T, all of capacity 1; a unit of flow on row -> col means the pair matches.
        """
        local_row = np.full(self.num_rows, -1, dtype=np.int64)
        local_row[rows] = np.arange(len(rows))
        local_col = np.full(self.num_cols, -1, dtype=np.int64)
        local_col[cols] = np.arange(len(cols))
        n_r, n_c = len(rows), len(cols)
        source, sink = n_r + n_c, n_r + n_c + 1
        owner, col = self._edges(rows)
        keep = (local_col[col] >= 0) & (col != self.row_mate[rows[owner]])
        edge_row, edge_col = owner[keep], local_col[col[keep]]
        matched = self.col_mate[cols] >= 0
        tails = np.concatenate(
            [
                np.full(len(sources), source),
                edge_row,
                n_r + np.flatnonzero(matched),
                n_r + np.flatnonzero(~matched),
            ]
        )
        heads = np.concatenate(
            [
                local_row[sources],
                n_r + edge_col,
                local_row[self.col_mate[cols[matched]]],
                np.full(int((~matched).sum()), sink),
            ]
        )
        size = n_r + n_c + 2
        network = csr_array(
            (np.ones(len(tails), np.int32), (tails.astype(np.int32), heads.astype(np.int32))),
            shape=(size, size),
        )
        flow = maximum_flow(network, source, sink, method="dinic").flow.tocoo()
        used = (flow.data > 0) & (flow.row < n_r) & (flow.col >= n_r) & (flow.col < n_r + n_c)
        new_rows, new_cols = rows[flow.row[used]], cols[flow.col[used] - n_r]
        self.row_mate[new_rows] = new_cols
        self.col_mate[new_cols] = new_rows
