"""Performance benchmarks: one module per subject (``bench/<name>.py`` with a ``run()``); ``python -m bench``."""
