"""Flax Linen encoders and layers; objectives build them from plain config fields."""
