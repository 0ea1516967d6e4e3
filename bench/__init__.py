"""Benchmarks run against a real server process (`python -m bench.<name>`), not part of tests."""
