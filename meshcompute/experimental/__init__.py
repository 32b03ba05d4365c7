"""Ray's ``ray.experimental`` names that meshcompute offers: ``tqdm_ray`` (progress bars that
tasks and actors report to their driver). Its modules are imported on first use."""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("tqdm_ray",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))


__all__ = ["tqdm_ray"]
