"""Benchmarks of sk_cae: defect-detection quality against peer detectors."""
