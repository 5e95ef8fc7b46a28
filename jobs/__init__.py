"""Spark stage jobs and the ``dhs`` command line: adapters from dhs_gen kernels to data at scale."""
