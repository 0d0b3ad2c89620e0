"""Benchmarks that start their own embedded engines: ``python -m bench.spine``."""
