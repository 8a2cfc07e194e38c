"""Synthetic drives of a procedural town: town, renderer, routes, and drives written as rosbag2 and '@' folders;
`synth`.
"""
