"""The benchmark tool: `.venv/bin/python -m bench` (see docs/BENCHMARKS.md)."""
