"""Shipped pretrained weights: manifest.json and <model>.<tag>.weights.h5 files."""
