"""The benchmarks and fault harnesses. Run them from the repository root; those that drive
the daemon import `harness` and so run as modules there: `python -m benchmarks.soak`."""
