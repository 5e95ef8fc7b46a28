"""Pure-numpy kernels of Dark Halo Scope: lensing, sources, PSFs, injection, artifacts, mixing.

Nothing in this package imports pyspark, torch or boto3: the kernels run unchanged on a
laptop, inside Spark executors and in tests. Conventions (units, grid, ellipticity,
magnitudes) are stated once in :mod:`dhs_gen.conventions`.
"""

__version__ = "0.1.0"
PIPELINE_VERSION = "dhs-0.1.0"
