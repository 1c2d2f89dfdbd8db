"""Benchmarks: long sweeps that check speed and quality targets, recorded in BENCHMARKS.md."""
