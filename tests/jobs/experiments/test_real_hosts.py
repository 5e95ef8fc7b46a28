"""The demo's real set: every real galaxy a host, one role per object, evaluation never sees a training galaxy."""

import numpy as np
import pytest

from jobs.catalogs.crossmatch import match_within
from jobs.experiments.real_hosts import (
    ROLES,
    build_real_eval_set,
    build_real_hosts,
    object_role,
    split_real_objects,
)
from jobs.runtime import outputs, storage

PROBS = (0.4, 0.1, 0.2, 0.3)


def _rows(uri):
    return storage.read_parquet(outputs.dataset_files(str(uri))).to_pylist()


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    table = build_real_hosts(shared_data, out / "hosts")
    split = split_real_objects(table, PROBS, out)
    build_real_eval_set(shared_data, split["uris"]["test_negatives"], str(out / "eval"))
    return out, table, split


def test_every_real_galaxy_cutout_becomes_a_host_or_a_counted_reject(real):
    out, table, _ = real
    des = outputs.read_manifest(str(out / "hosts" / "des_lrg_hosts"))
    zoo = outputs.read_manifest(str(out / "hosts" / "decals_galaxies"))
    assert (des["rows_written"], zoo["rows_written"], zoo["rejected_by_reason"]) == (46, 5, {"missing_coverage:g": 1})
    hsc = outputs.read_manifest(str(out / "hosts" / "hsc_scenes"))
    # the HSC scenes are 8-12" across, smaller than a 64-pixel DR10 stamp (16.8"): rejected, counted
    assert hsc["rows_written"] == 0 and hsc["rejected_by_reason"]["cutout_too_small"] >= 3
    assert table.num_rows == 46 + 5 + 1


def test_objects_get_one_role_and_evaluation_never_sees_a_training_galaxy(real):
    out, table, split = real
    groups = {name: {r["host_id"] for r in _rows(uri)} for name, uri in split["uris"].items()}
    assert sum(len(g) for g in groups.values()) == table.num_rows
    train_side = groups["injection_hosts"] | groups["hardneg"]
    assert not train_side & groups["test_negatives"] and not groups["injection_hosts"] & groups["hardneg"]
    assert all(len(g) for g in groups.values())
    # the evaluation set: the DR10 lens candidates and exactly the test negatives, nothing else
    ev = _rows(out / "eval")
    assert sum(r["label"] == 1 for r in ev) == 6
    assert {r["name"] for r in ev if r["label"] == 0} == {r["name"] for r in _rows(split["uris"]["test_negatives"])}
    # and no evaluation galaxy sits within 2" of a training galaxy (the same object under another name)
    train_pos = [(r["ra"], r["dec"]) for uri in (split["uris"]["injection_hosts"], split["uris"]["hardneg"])
                 for r in _rows(uri) if r["ra"] is not None]
    eval_pos = [(r["ra"], r["dec"]) for r in ev if r["ra"] is not None]
    if train_pos and eval_pos:
        i, _, _ = match_within(*np.array(eval_pos).T, *np.array(train_pos).T, 2.0)
        assert len(i) == 0
    # injection hosts carry their split: train hosts to train, val hosts to val
    assert {r["split"] for r in _rows(split["uris"]["injection_hosts"])} == {"train", "val"}


def test_roles_are_a_hash_of_the_object_alone():
    ids = [f"host_{i}" for i in range(4000)]
    roles = [object_role(h, PROBS) for h in ids]
    assert roles == [object_role(h, PROBS) for h in ids]
    freq = np.array([roles.count(r) for r in ROLES]) / len(ids)
    np.testing.assert_allclose(freq, PROBS, atol=0.03)


def test_the_real_set_rebuilds_in_place(real, shared_data):
    out, table, split = real
    again = split_real_objects(table, PROBS, out)
    assert again["objects_per_role"] == split["objects_per_role"]


def test_real_headline_counts_at_the_threshold_by_hand(tmp_path):
    import pyarrow as pa

    from jobs.experiments.demo import real_headline

    scores = pa.table({"anchor_id": [f"a{i}" for i in range(7)], "score": [0.9, 0.5, 0.2, 0.6, 0.4, 0.1, None],
                       "label": [1, 1, 1, 0, 0, 0, 0], "score_status": ["ok"] * 6 + ["no_image"]})
    storage.write_parquet(scores, str(tmp_path / "s" / "part-00000.parquet"))
    storage.write_json(str(tmp_path / "s" / outputs.MANIFEST_NAME), {"files": ["part-00000.parquet"]})
    h = real_headline(str(tmp_path / "s"), 0.5)
    # lenses 0.9, 0.5 at or above 0.5 (2 of 3); non-lenses 0.6 (1 of 3); AUC: 6 of 9 pairs ordered right
    assert (h["n_recovered"], h["n_real_lenses"], h["n_contaminated"], h["n_real_nonlenses"]) == (2, 3, 1, 3)
    assert h["auc_real"] == pytest.approx(6 / 9) and h["n_unscored"] == 1
