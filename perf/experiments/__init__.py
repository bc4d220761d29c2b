"""One-off A/B measurements behind figures in perf/README.md and docs/: run by hand
(`python -m perf.experiments.NAME`), never by `make perf`."""
