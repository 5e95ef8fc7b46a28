"""The kernel layer never imports cluster or training libraries (DESIGN.md layout)."""

import re

from support import REPO_ROOT


def test_kernels_import_no_cluster_libs():
    files = list((REPO_ROOT / "dhs_gen").rglob("*.py"))
    assert files, "dhs_gen has no Python files"
    pattern = re.compile(r"^\s*(from|import)\s+(pyspark|boto3|botocore|torch)\b", re.M)
    offenders = [str(p.relative_to(REPO_ROOT)) for p in files if pattern.search(p.read_text())]
    assert offenders == []


def test_no_global_numpy_random_in_kernels():
    pattern = re.compile(r"np\.random\.(seed|rand|randn|normal|uniform|poisson|choice|randint|random)\(")
    offenders = [str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "dhs_gen").rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == []
