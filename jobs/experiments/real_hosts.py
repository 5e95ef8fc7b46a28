"""The real galaxies of the shared data folder as hosts, hard negatives and never-seen test negatives.

Every real galaxy cutout of ``$DHS_SHARED_DATA`` becomes a host (``dhs hosts build``): the 46 DES
LRG hosts (counts at zeropoint 30, 0.263"/pix), the DECaLS galaxies (viewer cubes at ~0.1"/pix), the
DR9 field with its invvar and PSF, and the HSC scenes (zeropoint 27, 0.168"/pix, convolved to DR10
seeing). Each *object* then gets one role, by a hash of its ``host_id`` (:func:`object_role`):

``train_host`` / ``val_host``  arcs are injected into it (4a split fixed to train / val);
``hardneg``                     a real non-lens shown to training as label 0 (``--hard-negatives``);
``test_negative``               seen only by evaluation: the real non-lenses the contamination is measured on.

A galaxy therefore never appears both in training and in evaluation. The real lenses of the
evaluation set are the DR10 lens candidates, never used as hosts.
"""

from __future__ import annotations

import pyarrow as pa

from dhs_gen.utils import categorical_from_hash
from jobs.anchors.anchor_set import anchor_row, dr10_candidate_rows, write_anchor_set
from jobs.cutouts.cutout import Cutout
from jobs.cutouts.host_images import Declared
from jobs.runtime import outputs, storage
from jobs.runtime.schema import ANCHOR_SCHEMA, HOST_SCHEMA, decode_image
from jobs.stages.hosts import build_hosts

ROLES = ("train_host", "val_host", "hardneg", "test_negative")
ROLE_SALT = "real_object_role_v1"
DR10_SEEING = (1.5, 1.3, 1.2)   # g, r, z FWHM (arcsec), typical DECam seeing of the DR10 coadds

#: (name, folder under the shared data, what the files do not say themselves)
REAL_HOST_FOLDERS = (
    # DES Y3 median seeing is ~1.1" in r: the declared PSF the arcs in these hosts are rendered with
    ("des_lrg_hosts", "des/lrg_hosts", Declared(zeropoint=30.0, pixscale_arcsec=0.263, psf_fwhm_arcsec=(1.25, 1.1, 1.0))),
    ("decals_galaxies", "decals/zooniverse_examples", Declared(psf_fwhm_arcsec=DR10_SEEING)),
    ("dr9_field", "decals/dr9_cutout_invvar", Declared()),
    ("hsc_scenes", "hsc", Declared(zeropoint=27.0, pixscale_arcsec=0.168, bands="grizy",
                                   psf_fwhm_arcsec=(0.75, 0.7, 0.65), match_fwhm_arcsec=DR10_SEEING)),
)


def object_role(host_id: str, probs) -> str:
    """One role of :data:`ROLES` per object, from a hash of its id (stable, independent of the others)."""
    return ROLES[categorical_from_hash(str(host_id), list(probs), salt=ROLE_SALT)]


def build_real_hosts(shared, out, size_pix: int = 64, overwrite: bool = True) -> pa.Table:
    """Host datasets of every real folder present (``out/<name>``); returns all their host rows."""
    tables = []
    for name, folder, declared in REAL_HOST_FOLDERS:
        src = shared / folder
        if not src.is_dir():
            continue
        uri = str(out / name)
        build_hosts(f"local:{src}", uri, size=size_pix, declared=declared, overwrite=overwrite)
        tables.append(storage.read_parquet(outputs.dataset_files(uri)))
    return pa.concat_tables(tables) if tables else HOST_SCHEMA.empty_table()


def split_real_objects(table: pa.Table, probs, out, overwrite: bool = True) -> dict:
    """Write ``out/{injection_hosts,hardneg,test_negatives}`` host datasets by object role; returns their URIs
    and the object count per role. Injection hosts carry their 4a split (train / val)."""
    rows = table.to_pylist()
    roles = {r["host_id"]: object_role(r["host_id"], probs) for r in rows}
    groups = {"injection_hosts": [], "hardneg": [], "test_negatives": []}
    for r in rows:
        role = roles[r["host_id"]]
        if role in ("train_host", "val_host"):
            groups["injection_hosts"].append({**r, "split": "train" if role == "train_host" else "val"})
        else:
            groups["hardneg" if role == "hardneg" else "test_negatives"].append(r)
    uris = {}
    for name, group in groups.items():
        uris[name] = str(out / name)
        outputs.write_single_part("hosts", pa.Table.from_pylist(group, HOST_SCHEMA), [], uris[name],
                                  {"object_roles": list(ROLES), "role_probs": list(probs), "group": name},
                                  {"hosts": "real host folders of the shared data"}, overwrite)
    counts = {role: sum(1 for v in roles.values() if v == role) for role in ROLES}
    return {"uris": uris, "objects_per_role": counts}


def build_real_eval_set(shared, test_negatives_uri: str, out_uri: str, size_pix: int = 64,
                        overwrite: bool = True) -> dict:
    """The real evaluation set: DR10 lens candidates (label 1) and the never-seen test negatives (label 0)."""
    rows = dr10_candidate_rows(shared, size_pix)
    for h in storage.read_parquet(outputs.dataset_files(test_negatives_uri)).to_pylist():
        image = decode_image(h["image"], h["image_shape"])
        meta = {"name": h["name"], "ra": h["ra"], "dec": h["dec"], "class": "other", "grade": None,
                "source_catalog": h["source"], "brickname": h["brickname"]}
        rows.append(anchor_row(meta, Cutout(image, decode_image(h["invvar"], h["image_shape"]), h["provenance"])))
    return write_anchor_set(pa.Table.from_pylist(rows, ANCHOR_SCHEMA), [], out_uri,
                            {"size_pix": size_pix, "kind": "real lenses + never-seen real non-lenses"},
                            {"shared_data": str(shared), "test_negatives": test_negatives_uri}, overwrite)
