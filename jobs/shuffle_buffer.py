"""Shuffle buffer of row groups for the streaming reader: rows that must share a batch stay together.

:func:`_split_complete_groups` splits decoded rows into complete ``pair_id`` groups and the rest
(carried to the next record batch); :class:`_GroupBuffer` holds groups in fixed-capacity slots and
frees whole groups, drawn at random or in insertion order, totalling at most one batch. Used by
:class:`jobs.reader.StampStream`.
"""

from __future__ import annotations

import numpy as np


def _split_complete_groups(cols: dict, counts: dict) -> tuple[dict, np.ndarray, dict]:
    """Split rows into complete pair groups (rows contiguous, groups by first appearance) and the rest.

    Returns (complete rows, their group sizes, incomplete rows); ``counts`` maps each pair_id to
    its number of kept rows in the file.
    """
    codes, first, inverse, have = np.unique(cols["_pair_id"], return_index=True, return_inverse=True,
                                            return_counts=True)
    need = np.array([counts[p] for p in codes], dtype=np.int64)
    complete = have == need
    rank = np.argsort(np.argsort(first))  # group rank by first appearance
    rows = np.flatnonzero(complete[inverse])
    rows = rows[np.argsort(rank[inverse[rows]], kind="stable")]
    rest = np.flatnonzero(~complete[inverse])
    groups_in_order = np.flatnonzero(complete)[np.argsort(rank[complete], kind="stable")]
    done = {k: v[rows] for k, v in cols.items()}
    carry = {k: v[rest] for k, v in cols.items()}
    return done, have[groups_in_order], carry


class _GroupBuffer:
    """Fixed-capacity slot buffer of row groups (a group = rows that must share a batch)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.cols: dict[str, np.ndarray] | None = None
        self.group = np.full(0, -1, dtype=np.int64)  # group serial per slot, -1 = free
        self.next_group = 0
        self.n_rows = 0

    def _grow(self, cols: dict, need: int) -> None:
        size = max(self.capacity, need, 2 * len(self.group))
        old = len(self.group)
        self.group = np.concatenate([self.group, np.full(size - old, -1, dtype=np.int64)])
        new = {}
        for k, v in cols.items():
            arr = np.empty((size, *v.shape[1:]), dtype=v.dtype)
            if self.cols is not None:
                arr[:old] = self.cols[k][:old]
            new[k] = arr
        self.cols = new

    def add(self, cols: dict, sizes: np.ndarray) -> None:
        n = len(cols["label"])
        free = np.flatnonzero(self.group < 0)
        if len(free) < n:
            self._grow(cols, self.n_rows + n)
            free = np.flatnonzero(self.group < 0)
        slots = free[:n]
        for k, v in cols.items():
            self.cols[k][slots] = v
        self.group[slots] = self.next_group + np.repeat(np.arange(len(sizes)), sizes)
        self.next_group += len(sizes)
        self.n_rows += n

    def pop_slots(self, batch_size: int, rng: np.random.Generator | None) -> np.ndarray:
        """Free and return the slots of whole groups totalling <= batch_size rows (at least one group).

        Groups are drawn at random (``rng``) or in insertion order (None); the slots come in the
        drawn group order. Read their rows from :attr:`cols` before the next :meth:`add`.
        """
        occupied = np.flatnonzero(self.group >= 0)
        gids, gsize = np.unique(self.group[occupied], return_counts=True)
        order = rng.permutation(len(gids)) if rng is not None else np.arange(len(gids))
        take = order[np.cumsum(gsize[order]) <= batch_size]
        take = take if take.size else order[:1]
        chosen = np.isin(self.group[occupied], gids[take])
        slots = occupied[chosen]
        # Rows in the drawn group order (insertion order when not shuffling), not in slot order.
        rank = np.empty(len(gids), dtype=np.int64)
        rank[take] = np.arange(len(take))
        slots = slots[np.argsort(rank[np.searchsorted(gids, self.group[slots])], kind="stable")]
        self.group[slots] = -1
        self.n_rows -= len(slots)
        return slots
