"""Reference render engine: the same task through lenstronomy's ``ImageModel``.

Used as ``engine="lenstronomy"`` in :mod:`dhs_gen.physics.injection` and as the oracle of its tests
and benchmark. lenstronomy is imported lazily here only, so the kernels stay importable without it.

The task is translated one-to-one:

* ``PixelGrid`` with our pixel centres (``(i - (N-1)/2) * pixscale_arcsec``, x along columns);
* ``PSF(psf_type="PIXEL")`` with the same kernel, convolved at pixel level (lenstronomy's
  default ``supersampling_convolution=False``, ``fftconvolve(mode="same")``), and
  ``supersampling_factor = supersample`` (the same sub-pixel centres);
* ``LensModel(["SIE", "SHEAR"])`` with ``SIEShear.lenstronomy_kwargs()``;
* ``SERSIC_ELLIPSE`` with ``amp = I_e`` from our total flux, and the *exact* ``b_n``
  (lenstronomy's default is the approximation ``1.9992 n - 0.3271``: we override it on the
  profile instance we create, never on the class); ``INTERPOL`` for templates with the
  surface-brightness image scaled to the total flux.

``adaptive`` and ``refine_tol`` are accepted for signature compatibility and ignored: this
engine always supersamples every pixel.
"""

from __future__ import annotations

import numpy as np

from dhs_gen.sources.profiles import sersic_b_n


def _exact_b_n(n):
    return np.vectorize(sersic_b_n)(n) if np.ndim(n) else sersic_b_n(float(n))


def light_model(names: list[str]):
    """lenstronomy ``LightModel`` for ``names`` with exact Sersic ``b_n`` on its own instances."""
    from lenstronomy.LightModel.light_model import LightModel

    model = LightModel(names)
    for profile in model.func_list:
        if hasattr(profile, "b_n"):
            profile.b_n = _exact_b_n  # instance attribute: shadows the approximate staticmethod here only
    return model


def image_model(lens, source, psf, stamp_size: int, pixscale_arcsec: float, supersample: int):
    """(lenstronomy ``ImageModel``, kwargs_lens, kwargs_source) for one band of a task.

    Parameters
    ----------
    lens : SIEShear
    source : SersicSource or TemplateSource
    psf : ndarray (k, k), odd, unit sum
    stamp_size : int, pixels
    pixscale_arcsec : float, arcsec per pixel
    supersample : int
    """
    from lenstronomy.Data.pixel_grid import PixelGrid
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel

    corner = -(stamp_size - 1) / 2.0 * pixscale_arcsec
    grid = PixelGrid(nx=stamp_size, ny=stamp_size, transform_pix2angle=np.eye(2) * pixscale_arcsec,
                     ra_at_xy_0=corner, dec_at_xy_0=corner)
    name, kwargs_source = source.lenstronomy()
    model = ImageModel(grid, PSF(psf_type="PIXEL", kernel_point_source=np.asarray(psf, dtype=float)),
                       lens_model_class=LensModel(["SIE", "SHEAR"]), source_model_class=light_model([name]),
                       kwargs_numerics={"supersampling_factor": int(supersample)})
    return model, lens.lenstronomy_kwargs(), [kwargs_source]


def render_bands(lens, sources, psfs, stamp_size, pixscale_arcsec, supersample, adaptive=False, refine_tol=None):
    """Render every band with lenstronomy.

    Returns
    -------
    (images, flux0) : ndarray (B, H, W) float64 flux per pixel (PSF-convolved), and the
        unconvolved lensed flux of band 0 inside the stamp (same flux unit).
    """
    images, flux0 = [], 0.0
    for b, (source, psf) in enumerate(zip(sources, psfs, strict=True)):
        model, kl, ks = image_model(lens, source, psf, stamp_size, pixscale_arcsec, supersample)
        images.append(np.asarray(model.image(kwargs_lens=kl, kwargs_source=ks), dtype=np.float64))
        if b == 0:
            flux0 = float(np.sum(model.image(kwargs_lens=kl, kwargs_source=ks, unconvolved=True)))
    return np.stack(images), flux0
