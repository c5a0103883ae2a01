"""Benchmarks of wta-bridge: each section compares two measurements taken in the same run.

`python -m benchmarks` runs the sections, writes their results as JSON and rewrites the
results table in docs/benchmarks.md. Ratios, not absolute times, are the quoted results,
because absolute times drift on shared machines.
"""
