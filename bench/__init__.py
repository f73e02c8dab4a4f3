"""Benchmarks, run through `python launch.py bench NAME ...`; each writes JSON and a Markdown table."""
