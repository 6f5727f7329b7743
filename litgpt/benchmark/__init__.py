"""Benchmarks: attention, decode, pretraining throughput, and the attention-variant comparison."""
