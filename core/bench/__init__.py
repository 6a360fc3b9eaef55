"""Benchmarking: model-level latency/throughput and an HTTP load generator."""
