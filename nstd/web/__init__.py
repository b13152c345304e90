"""The daemon's read-only HTTP endpoint: metrics for Prometheus and health for probes."""
