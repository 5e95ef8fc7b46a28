"""Packaging for EMR: the bundle imports from the zip alone, pins equal pyproject's, the bootstrap is sane.

Oracles: a fresh Python process with only the zip prepended to sys.path (modules must come from
the zip), the versions actually installed in this environment (importlib.metadata), pyproject.toml's
text, jobs.runtime.config loading the resolved presets, and bash itself running the bootstrap in dry-run mode.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emr import package
from jobs.runtime.config import load_config

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO / "bootstrap" / "install_deps.sh"


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    package.build(out, git_sha="f" * 40)
    return out


def test_bundle_imports_from_the_zip_alone(dist, tmp_path):
    zip_path = dist / package.BUNDLE_NAME
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]);"
            "import jobs.stages.manifest, jobs.stages.inject, jobs.stages.coadd_cache, jobs.stages.completeness, jobs.evaluation.score, dhs_gen.physics.lensing, emr.launcher;"
            "print(json.dumps({m: sys.modules[m].__file__ for m in "
            "('jobs.stages.manifest', 'jobs.stages.inject', 'jobs.stages.completeness', 'dhs_gen.physics.lensing', 'emr.launcher')}))")
    # -I: no PYTHONPATH / user site; cwd outside the repository, so only the zip can provide the packages
    out = subprocess.run([sys.executable, "-I", "-c", code, str(zip_path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)
    assert all(f.startswith(str(zip_path) + os.sep) for f in files.values()), files


def test_entry_scripts_run_from_the_bundle(dist, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(dist / package.BUNDLE_NAME)}
    for stage in package.ENTRY_MODULES:
        out = subprocess.run([sys.executable, str(dist / "entry" / f"{stage}.py"), "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage:" in out.stdout, (stage, out.stderr)


def test_presets_suites_and_experiments_resolve_by_name_from_the_bundle(dist, tmp_path):
    """Run from the zip, configs/ is the one beside it: presets, suites and experiments load by name."""
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]);"
            "from jobs.runtime.config import CONFIG_DIR, load_config;"
            "from jobs.experiments.ablate_suite import load_suite;"
            "from jobs.experiment import ExperimentConfig;"
            "e = ExperimentConfig.from_yaml('v6_real_hardneg');"
            "print(json.dumps({'dir': str(CONFIG_DIR), 'gen7a': load_config('gen7a').to_dict(),"
            " 'suite': [v.preset for v in load_suite('gen6').variants],"
            " 'experiment': e.injection_config().to_dict()}))")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(dist / package.BUNDLE_NAME)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["dir"] == str(dist / "configs")
    assert got["gen7a"] == load_config("gen7a").to_dict() and got["suite"] == ["gen7c", "gen7a", "gen5", "gen6"]
    from jobs.experiment import ExperimentConfig

    assert got["experiment"] == ExperimentConfig.from_yaml("v6_real_hardneg").injection_config().to_dict()


def test_requirements_pins_equal_pyproject_and_the_installed_versions(dist):
    text = (REPO / "pyproject.toml").read_text()
    lines = [ln for ln in (dist / "requirements-emr.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    torch = [ln for ln in (dist / "requirements-emr-torch.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    dependencies = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    pinned = [d.strip().strip('",') for d in dependencies.splitlines() if "==" in d]
    assert sorted(lines + torch + [p for p in pinned if p.startswith("pyspark==")]) == sorted(pinned)
    for line in lines + torch:
        name, version = line.split("==")
        assert f'"{line}"' in text
        # what the tests ran with is what EMR gets (a local label like "+cpu" names the build, not the version)
        assert importlib.metadata.version(name).split("+")[0] == version
    assert not any(ln.startswith(("pyspark", "torch")) for ln in lines) and torch[0].startswith("torch==")


def test_resolved_presets_load_like_the_originals(dist):
    for name in ("gen7", "gen8b", "demo"):
        assert load_config(str(dist / "configs" / f"{name}.yaml")).to_dict() == load_config(name).to_dict()
        assert "extends" not in yaml.safe_load((dist / "configs" / f"{name}.yaml").read_text())


def test_build_info_and_reproducible_zip(dist, tmp_path):
    info = json.loads((dist / "BUILD_INFO.json").read_text())
    assert info["git_sha"] == "f" * 40
    for rel, meta in info["files"].items():
        assert hashlib.sha256((dist / rel).read_bytes()).hexdigest() == meta["sha256"]
    first, again = tmp_path / "first", tmp_path / "again"   # back to back: the tree must not change in between
    package.build(first, git_sha="f" * 40)
    package.build(again, git_sha="f" * 40)
    assert (again / package.BUNDLE_NAME).read_bytes() == (first / package.BUNDLE_NAME).read_bytes()
    uploaded = package.upload(again, str(tmp_path / "remote"))
    assert len(uploaded) == len(info["files"]) + 1 and (tmp_path / "remote" / "entry" / "inject.py").is_file()


def test_bootstrap_dry_run_installs_the_generated_requirements():
    assert BOOTSTRAP.read_text().splitlines()[:20].count("set -euo pipefail") == 1
    assert subprocess.run(["bash", "-n", str(BOOTSTRAP)]).returncode == 0
    env = {**os.environ, "DHS_BOOTSTRAP_DRY_RUN": "1"}
    out = subprocess.run(["bash", str(BOOTSTRAP), "s3://b/code/"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "+ aws s3 cp s3://b/code/requirements-emr.txt" in out.stdout
    assert "-r" in out.stdout and "torch" not in out.stdout.replace("requirements-emr-torch", "")
    with_torch = subprocess.run(["bash", str(BOOTSTRAP), "s3://b/code", "--with-torch"], env=env, capture_output=True,
                                text=True).stdout
    assert "--index-url https://download.pytorch.org/whl/cpu" in with_torch and "requirements-emr-torch.txt" in with_torch
    bad = subprocess.run(["bash", str(BOOTSTRAP), "s3://b/code", "--gpu"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--gpu" in bad.stderr
    assert subprocess.run(["bash", str(BOOTSTRAP)], env=env, capture_output=True).returncode != 0
