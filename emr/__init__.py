"""Run the pipeline on Amazon EMR: cluster config, request builder + one boto3 call, packaging.

``emr.config`` (YAML -> validated :class:`emr.config.ClusterConfig`), ``emr.launcher`` (pure
``build_cluster_request`` and ``launch``), ``emr.package`` (the ``dist/`` bundle for
``spark-submit --py-files``), ``emr.cli`` (``dhs emr plan|launch|status|logs``). See emr/README.md.
"""
