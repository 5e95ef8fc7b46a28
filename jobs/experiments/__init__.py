"""Experiments built from the stages: ablation suites, source-bank builds, the offline demo."""
