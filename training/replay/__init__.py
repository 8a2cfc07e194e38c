"""Replaying a drive log against a map, offline or through the running node: per-frame results, metrics, figures;
`replay`.
"""
