"""jetgate benchmarks: `python -m bench` (see `bench.publish`)."""
