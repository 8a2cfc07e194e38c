"""Benchmarks on synthetic worlds: the sequence localizer on a grid city (`bench-localizer`)."""
