"""Example data, clients and benchmarks for the privacy gateway."""
