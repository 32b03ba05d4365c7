"""Utilities shaped like ``ray.util``."""
