"""The one place a SparkSession is made, locally or on a cluster."""

from __future__ import annotations

import os
import sys


def get_spark(app_name: str, master: str | None = None, conf: dict | None = None):
    """Return a SparkSession; ``master=None`` keeps whatever spark-submit configured.

    Local runs use the current interpreter on the executors (``PYSPARK_PYTHON``) so that the
    venv's numpy, lenstronomy and this package are what the Python workers import.

    A local session (``master`` ``local[...]``) runs its JVM with the C1 compiler only
    (``-XX:TieredStopAtLevel=1`` as ``spark.driver.defaultJavaOptions``, replacing a
    ``spark-defaults.conf`` value; a ``conf`` entry replaces it in turn): that JVM only plans and
    schedules, every row is processed in the Python workers, and C2's background compiles took the
    workers' CPU (a 2.5 s 4c run of ``make bench`` on 2 cores: 0.5-0.9 core-seconds of JVM CPU with
    C2, 0.17-0.23 without). Cluster sessions keep their JVM options.
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
    if master and master.startswith("local"):
        defaults["spark.driver.defaultJavaOptions"] = "-XX:TieredStopAtLevel=1"
    for key, value in {**defaults, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
