"""``python -m bench [name ...]`` (``make bench``): run every benchmark module and print its table.

A benchmark is any module ``bench/<name>.py`` with a ``run()`` function. ``run()`` either prints
its own lines and returns None, or returns the text (a plain table and ratio lines) to print.
Modules run in alphabetical order, each in this one process, so ratios within a module come
from the same run and machine state. Add a benchmark by adding a module: nothing to register.

``python -m bench kernels`` runs only ``bench/kernels.py``; ``--list`` shows what would run.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path


def discover() -> list[str]:
    """Names of the modules in this package that define ``run()``, sorted."""
    names = []
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if callable(getattr(module, "run", None)):
            names.append(info.name)
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmark modules and exit")
    args = parser.parse_args(argv)
    available = discover()
    if args.list:
        print("\n".join(available))
        return 0
    unknown = sorted(set(args.names) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available}")
    failed = []
    for name in args.names or available:
        print(f"== bench.{name} ==", flush=True)
        t0 = time.perf_counter()
        try:
            text = importlib.import_module(f"bench.{name}").run()
        except Exception as exc:  # one failing benchmark must not hide the others' numbers
            failed.append(name)
            print(f"bench.{name} FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        if text:
            print(text)
        print(f"(bench.{name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
