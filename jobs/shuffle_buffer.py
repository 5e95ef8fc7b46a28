"""Shuffle buffer of row groups for the streaming reader: rows that must share a batch stay together.

:func:`_split_complete_groups` splits decoded rows into complete ``pair_id`` groups and the rest
(carried to the next record batch); :class:`_ChunkBuffer` holds the decoded chunks and draws whole
groups, at random or in insertion order, totalling at most one batch. Used by
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


class _ChunkBuffer:
    """Shuffle buffer that holds the decoded record batches themselves (chunks), not copies.

    Rows are drawn as whole groups (a group = rows that must share a batch). Copying every stamp
    into a slot array cost one full pass over the pixels (~12 us of ~65 us per 3x64x64 stamp,
    measured); here a chunk is dropped once all its rows are drawn, and when the drawn-but-held
    rows exceed ``dead_limit`` the oldest chunk is compacted in place to its live rows. With
    ``dead_limit`` = the shuffle buffer size, ~20% of rows are copied once and at most ~1.75x
    the buffer's rows are held (simulated for a 1024-row buffer, 256-row batches and chunks).
    """

    def __init__(self, dead_limit: int):
        self.dead_limit = dead_limit
        self.chunks: list[dict[str, np.ndarray]] = []
        self.groups: list[np.ndarray] = []  # group serial per chunk row; -1 once drawn
        self.next_group = 0
        self.n_rows = 0  # live (not yet drawn) rows
        self.n_held = 0  # rows held in chunks, live or drawn

    def add(self, cols: dict, sizes: np.ndarray) -> None:
        n = len(cols["label"])
        self.chunks.append(cols)
        self.groups.append(self.next_group + np.repeat(np.arange(len(sizes), dtype=np.int64), sizes))
        self.next_group += len(sizes)
        self.n_rows += n
        self.n_held += n

    def pop(self, batch_size: int, rng: np.random.Generator | None) -> list[tuple[dict, np.ndarray]]:
        """Draw whole groups totalling <= batch_size rows (at least one group).

        Groups are drawn at random (``rng``) or in insertion order (None). Returns ``(chunk
        columns, row indices)`` per chunk holding drawn rows, in insertion order; the rows stay
        readable through these references whatever the buffer does next.
        """
        sizes = [len(g) for g in self.groups]
        group = np.concatenate(self.groups)
        live = group[group >= 0]
        gids, gsize = np.unique(live, return_counts=True)
        order = rng.permutation(len(gids)) if rng is not None else np.arange(len(gids))
        take = order[np.cumsum(gsize[order]) <= batch_size]
        take = take if take.size else order[:1]
        chosen = np.isin(group, gids[take])
        parts, keep, start = [], [], 0
        for cols, g, n in zip(self.chunks, self.groups, sizes, strict=True):
            rows = np.flatnonzero(chosen[start:start + n])
            start += n
            if rows.size:
                parts.append((cols, rows))
                g[rows] = -1
            if (g >= 0).any():
                keep.append((cols, g))
            else:
                self.n_held -= n
        self.chunks, self.groups = [c for c, _ in keep], [g for _, g in keep]
        self.n_rows -= sum(len(r) for _, r in parts)
        self._compact()
        return parts

    def _compact(self) -> None:
        i = 0
        while self.n_held - self.n_rows > self.dead_limit and i < len(self.chunks):
            g = self.groups[i]
            rows = np.flatnonzero(g >= 0)
            if len(rows) < len(g):
                self.n_held -= len(g) - len(rows)
                self.chunks[i] = {k: v[rows] for k, v in self.chunks[i].items()}
                self.groups[i] = g[rows]
            i += 1
