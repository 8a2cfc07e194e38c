"""Benchmarks that print figures: descriptor backends (`bench`), the sequence localizer on a grid city (`bench-localizer`)."""
