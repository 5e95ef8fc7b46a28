"""Survey-scale brick reads: a DR10-size brick (3600 x 3600 pixels, 10 tile-compressed files) with ~10 stamps.

At survey scale 4c cuts ~10 stamps per brick (10^7 stamps over ~250k DR10 South bricks... a few to a
few tens each), so how a brick is read decides the stage's cost. Two readers of the same files, side
by side in one process (CPU time):

* whole: every file decompressed whole (``load_brick(tiles=False)``), then the stamps cut;
* tiles: ``load_brick(tiles=True)``: only the tile rows each stamp touches are decompressed.

The files are written as ``dhs sky`` writes them (RICE_1, row tiles as fpack's default, noise-relative
quantisation, CHECKSUM/DATASUM). Prints the rate of each and their ratio.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

SIZE, N_STAMPS, STAMP = 3600, 10, 64


def write_dr10_size_brick(root: str, brickname: str = "1500p020") -> None:
    """Ten files of a 3600 x 3600 brick in the DR10 layout: sky noise, invvar, a smooth PSF map, maskbits."""
    from astropy.io import fits

    from jobs.cutouts.coadds import coadd_file
    from jobs.runtime import storage
    from jobs.stages.sky import _hdu_bytes

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    header = fits.Header()
    for b, sigma in zip("grz", (0.004, 0.006, 0.012), strict=True):
        maps = {"image": rng.normal(0.0, sigma, (SIZE, SIZE)).astype(np.float32),
                "invvar": np.full((SIZE, SIZE), 1.0 / sigma**2, np.float32) * (1 + 0.1 * xx),
                "psfsize": (1.2 + 0.2 * xx + 0.1 * yy).astype(np.float32)}
        for kind, data in maps.items():
            q = 16.0 if kind == "image" else -1e-6 * float(np.median(data))
            storage.write_bytes(coadd_file(root, brickname, kind, b), _hdu_bytes(data, header, q, 1))
    mask = (rng.uniform(size=(SIZE, SIZE)) < 0.01).astype(np.int32)
    storage.write_bytes(coadd_file(root, brickname, "maskbits"), _hdu_bytes(mask, header, 16.0, 1))


def _read(root: str, positions, tiles: bool) -> tuple[float, list]:
    from jobs.cutouts.coadds import cut_stamp_at, load_brick

    t0 = time.process_time()
    brick = load_brick(root, "1500p020", tiles=tiles, n_stamps=len(positions), stamp_size_pix=STAMP)
    stamps = [cut_stamp_at(brick, x, y, STAMP) for x, y in positions]
    return time.process_time() - t0, stamps


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="dhs-bench-bricks-") as tmp:
        root = str(Path(tmp) / "coadd")
        write_dr10_size_brick(root)
        positions = list(np.random.default_rng(1).uniform(100, SIZE - 100, (N_STAMPS, 2)))
        _read(root, positions[:1], True)   # imports outside the clock
        t_whole, a = _read(root, positions, tiles=False)
        t_tiles, b = _read(root, positions, tiles=True)
        same = all(np.array_equal(x.image, y.image) and np.array_equal(x.invvar, y.invvar) for x, y in zip(a, b, strict=True))
    return "\n".join([
        f"DR10-size brick ({SIZE} x {SIZE}, 10 files), {N_STAMPS} stamps of {STAMP} px:",
        f"  whole-file reads: {t_whole:.2f} s CPU per brick ({N_STAMPS / t_whole:.1f} stamps/s)",
        f"  tile-section reads: {t_tiles:.2f} s CPU per brick ({N_STAMPS / t_tiles:.1f} stamps/s); identical pixels: {same}",
        f"  tiles / whole rate: {t_whole / t_tiles:.1f}x (survey scale: ~10 stamps per brick)",
    ])
