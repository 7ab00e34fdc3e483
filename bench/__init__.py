"""Benchmarks of Spookd against the Go reference plugin and the targets of SPEC §9.

Run ``python bench/run.py`` (``--quick`` for a short pass); results are printed and
written to ``docs/benchmarks.md``.
"""
