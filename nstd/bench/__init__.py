"""`nstd bench`: nstd's engine against the tutorial loop, measured side by side in one run."""
