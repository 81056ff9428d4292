"""Datasets: the rerank-request schema, the waterfall-feed simulator, real-data loaders,
per-user time splits and device partitions."""
