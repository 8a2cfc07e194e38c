"""Synthetic drive logs of a procedural town (`dsformer-vpr synth`)."""
