"""Benchmarks that print figures: descriptor backends, the localizer."""
