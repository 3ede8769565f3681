"""Benchmarks of conv_ext against torch: suites (shapes.py), networks (models.py), pytest-benchmark
files (test_*.py, run with ``pytest benchmarks/ --benchmark-only``) and results/. The command-line
runner is ``python -m conv_ext.bench``, which imports this package from the source tree."""
