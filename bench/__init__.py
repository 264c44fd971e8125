"""Benchmarks of HiveMind against its peers; see bench/README.md."""
