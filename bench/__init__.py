"""Benchmarks that measure entityd beside its raw parts in one run and print the ratios."""
