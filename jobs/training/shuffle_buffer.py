"""Shuffle buffer of row groups for the streaming reader: rows that must share a batch stay together.

:func:`_split_complete_groups` splits decoded rows into complete ``pair_id`` groups and the rest
(carried to the next record batch); :class:`_ChunkBuffer` holds the decoded chunks and draws whole
groups, at random or in insertion order, totalling at most one batch. Used by
:class:`jobs.training.reader.StampStream`.
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


def gather_rows(parts: list[tuple[dict, np.ndarray]], column: str) -> np.ndarray:
    """Rows of ``column`` from ``(chunk columns, row indices)`` pairs, concatenated in one copy."""
    first = parts[0][0][column]
    out = np.empty((sum(len(rows) for _, rows in parts), *first.shape[1:]), dtype=first.dtype)
    lo = 0
    for cols, rows in parts:
        # mode="clip": with the default mode, take copies through a temporary (numpy docs).
        np.take(cols[column], rows, axis=0, out=out[lo:lo + len(rows)], mode="clip")
        lo += len(rows)
    return out


class _ChunkBuffer:
    """Shuffle buffer that holds the decoded record batches themselves (chunks), not copies.

    Rows are drawn as whole groups (a group = rows that must share a batch). Copying every stamp
    into a slot array cost one full pass over the pixels (~12 us of ~65 us per 3x64x64 stamp,
    measured); here a chunk is dropped once all its rows are drawn, and when the drawn rows
    still held exceed ``dead_limit`` the sparsest chunks are merged (:meth:`_compact`). With
    ``dead_limit`` = the shuffle buffer size, ~30% of rows are copied once, at most ~1.75x the
    buffer's rows are held and ~7 chunks stay alive (simulated for a 1024-row buffer, 256-row
    batches and chunks).
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
        columns, row indices)`` per chunk holding drawn rows, in insertion order: which rows
        make a batch is random, their order within it is not (a mean loss does not see it). The
        rows stay readable through these references whatever the buffer does next.
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
        """Past ``dead_limit`` drawn rows held, merge the live rows of the sparsest chunks into one.

        Enough chunks are merged to free half the limit beyond the excess, so compactions are
        rare and few chunks stay alive (fewer, larger copies per batch). The merged chunk takes
        the place of the oldest merged one: in insertion order (no shuffling) only the oldest
        chunk has drawn rows, so that order is kept.
        """
        excess = self.n_held - self.n_rows - self.dead_limit
        if excess <= 0:
            return
        dead = [int((g < 0).sum()) for g in self.groups]
        pick, freed = [], 0
        for i in sorted(range(len(dead)), key=lambda i: -dead[i]):
            if freed >= excess + self.dead_limit // 2 or dead[i] == 0:
                break
            pick.append(i)
            freed += dead[i]
        pick.sort()
        parts = [(self.chunks[i], np.flatnonzero(self.groups[i] >= 0)) for i in pick]
        merged = {key: gather_rows(parts, key) for key in parts[0][0]}
        group = np.concatenate([self.groups[i][rows] for i, (_, rows) in zip(pick, parts, strict=True)])
        for i in reversed(pick[1:]):
            del self.chunks[i], self.groups[i]
        self.chunks[pick[0]], self.groups[pick[0]] = merged, group
        self.n_held -= freed
