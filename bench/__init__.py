"""Benchmarks of the kubelambda operator against a real cluster (see bench/README.md)."""
