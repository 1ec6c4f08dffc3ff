"""Benchmarks, run on purpose (./dev bench); each writes its figures to benchmarks/results/."""
