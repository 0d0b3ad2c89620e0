"""The benchmarks under bench/ keep running: each quick form, run as `make bench` runs it."""
