"""`make perf`: the load harness and micro-benchmarks (see perf/README.md)."""
