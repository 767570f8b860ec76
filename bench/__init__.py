"""Benchmarks of the bundle build and the offline import against docker save/load (see bench/run.py)."""
