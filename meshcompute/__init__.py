"""meshcompute: a distributed compute engine for Python on a ZeroMQ peer-to-peer mesh.

The API mirrors Ray Core, so ``import meshcompute as ray`` ports most programs::

    import meshcompute as mesh

    @mesh.remote
    def square(x):
        return x * x

    print(mesh.get([square.remote(i) for i in range(4)]))   # [0, 1, 4, 9]
"""

from . import actor, exceptions, kv, util
from .api.remote import ActorClass, ActorHandle, RemoteFunction, method
from .api.session import (
    RuntimeContext,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    timeline,
    wait,
)
from .owner.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from .owner.object_ref import ObjectRef

__version__ = "0.1.0"

_LAZY = ("cloudpickle", "dag", "experimental", "job_submission")
"""Modules that are attributes without an import, imported on first use (as Ray's)."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ActorClass",
    "ActorHandle",
    "DynamicObjectRefGenerator",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "RuntimeContext",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "kv",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "util",
    "wait",
]
