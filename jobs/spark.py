"""The one place a SparkSession is made, locally or on a cluster."""

from __future__ import annotations

import os
import sys


def get_spark(app_name: str, master: str | None = None, conf: dict | None = None):
    """Return a SparkSession; ``master=None`` keeps whatever spark-submit configured.

    Local runs use the current interpreter on the executors (``PYSPARK_PYTHON``) so that the
    venv's numpy, lenstronomy and this package are what the Python workers import.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    defaults = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "true",
        "spark.sql.shuffle.partitions": "8",
        "spark.driver.memory": "2g",
        "spark.python.worker.reuse": "true",
    }
    for key, value in {**defaults, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
