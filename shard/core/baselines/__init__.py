"""Baseline policies under the same `handle()` contract as Symphony (reference §4)."""
