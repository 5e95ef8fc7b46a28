"""Real hard negatives in training (seed 004, Stage 3): real cutouts mixed into the batches as label 0.

The set is a host or anchor dataset of real cutouts (``dhs hosts build`` / ``dhs anchors build``
on the positions ``dhs hardneg collect`` chose: model false positives, rings, mergers). Each row
keeps the training weight of the source that chose it (``weight``, else the default weight of its
``hardneg_source`` / ``class``: model_fp 3.0, ring 2.0, merger 1.5, else 1.0); its loss weight is
that times ``--hard-neg-weight``. Rows with label 1 (an anchor set's lenses), another stamp shape
or non-finite pixels are left out and counted, as scoring would reject them.

Every epoch goes through the whole set once, spread evenly over its steps, in an order drawn from
``(seed, epoch)``: a run is reproducible, and every hard negative weighs the same per epoch.
"""

from __future__ import annotations

import math

import numpy as np

from dhs_gen.errors import InvalidValueError, check_range
from jobs.catalogs.hardneg import DEFAULT_WEIGHTS
from jobs.runtime import storage
from jobs.runtime.outputs import dataset_files
from jobs.runtime.schema import decode_image
from jobs.training.preprocess import normalize_stamps

HARDNEG_SALT = 0x68_6E  # "hn": the order stream of the hard negatives, apart from the reader's


def source_weight(row: dict) -> tuple[float, str]:
    """(training weight, source name) of one hard-negative row."""
    source = row.get("hardneg_source") or row.get("class") or "unspecified"
    w = row.get("weight")
    if w is not None and math.isfinite(float(w)) and float(w) > 0:
        return float(w), source
    return float(DEFAULT_WEIGHTS.get(source, 1.0)), source


class HardNegativeSet:
    """The hard negatives of one training run, normalised like the stamps and held in memory.

    Parameters
    ----------
    uri : str
        Host or anchor dataset (directory with ``_manifest.json``, local or s3://).
    weight : float
        ``--hard-neg-weight``: multiplies every row's source weight.
    stamp_shape : tuple (B, H, W)
        Shape of the training stamps; a larger hard negative is cut to its central part.
    """

    def __init__(self, uri: str, weight: float, stamp_shape: tuple):
        self.uri, self.weight = str(uri), check_range("hard_neg_weight", weight, 0.0, 1000.0, lo_open=True)
        files = dataset_files(self.uri)
        cols = storage.read_parquet(files)
        names = set(cols.column_names)
        if not {"image", "image_shape"} <= names:
            raise InvalidValueError("hard_negatives", self.uri, "needs image and image_shape columns "
                                    "(a dataset of `dhs hosts build` or `dhs anchors build`)")
        b, h, w = (int(s) for s in stamp_shape)
        images, weights, ids, self.by_source, self.excluded = [], [], [], {}, {}
        for row in cols.to_pylist():
            reason = None
            if int(row.get("label") or 0) != 0:
                reason = "label_1"
            elif row["image"] is None or row["image_shape"] is None:
                reason = "no_image"
            else:
                img = decode_image(row["image"], row["image_shape"])
                ih, iw = img.shape[1:]
                if img.shape[0] != b or ih < h or iw < w:
                    reason = "shape"
                else:
                    oy, ox = ih // 2 - h // 2, iw // 2 - w // 2   # the host stays on the central pixel
                    img = img[:, oy:oy + h, ox:ox + w]
                    if not np.all(np.isfinite(img)):
                        reason = "nonfinite_pixels"
            if reason:
                self.excluded[reason] = self.excluded.get(reason, 0) + 1
                continue
            sw, source = source_weight(row)
            images.append(img)
            weights.append(sw * self.weight)
            ids.append(row.get("host_id") or row.get("anchor_id") or row.get("name"))
            self.by_source[source] = self.by_source.get(source, 0) + 1
        if not images:
            raise InvalidValueError("hard_negatives", self.uri, f"no usable rows (left out: {self.excluded})")
        self.images = normalize_stamps(np.stack(images))
        self.weights = np.asarray(weights, dtype=np.float32)
        self.ids = ids

    def __len__(self) -> int:
        return len(self.weights)

    def epoch_batches(self, epoch: int, steps: int, seed: int) -> list[np.ndarray]:
        """Row indices per step: the whole set once, in a (seed, epoch) order, spread over ``steps`` steps."""
        order = np.random.default_rng([int(seed), int(epoch), HARDNEG_SALT]).permutation(len(self))
        return np.array_split(order, max(1, int(steps)))

    def dihedral_ops(self, epoch: int, step: int, n: int, seed: int) -> np.ndarray:
        """One of the 8 flips/rotations per drawn row, as the reader augments the stamps."""
        return np.random.default_rng([int(seed), int(epoch), int(step), HARDNEG_SALT]).integers(0, 8, n)

    def summary(self) -> dict:
        """What ``train_config.json`` records: path, rows used, weight, rows per source, rows left out."""
        return {"path": self.uri, "n_rows": len(self), "weight": self.weight, "by_source": dict(self.by_source),
                "excluded": dict(self.excluded)}

