"""Utilities shaped like ``ray.util``."""

from .actor_pool import ActorPool

__all__ = ["ActorPool"]
