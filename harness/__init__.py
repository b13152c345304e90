"""What the tests and the benchmarks share: the real daemon as a process, a throwaway
PostgreSQL, real network shares, the bad-input corpus, made-up photos and weights, and
the exactly-once audit of an outbox.

Importable from the repository root: pytest puts the root on sys.path (`pythonpath` in
pyproject.toml), and the benchmarks that use it run as modules from there
(`python -m benchmarks.soak`). It is not part of the nstd distribution.
"""
