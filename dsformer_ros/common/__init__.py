"""Foundations every pipeline shares: config dataclasses, declared settings, CLI plumbing, atomic writes, devices,
angle/time conventions, UTM.
"""
