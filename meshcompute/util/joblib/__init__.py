"""A joblib backend on the mesh, as ``ray.util.joblib``::

    import joblib
    from meshcompute.util.joblib import register_mesh

    register_mesh()
    with joblib.parallel_backend("mesh"):       # "ray" works too
        search.fit(X, y)                        # scikit-learn's n_jobs work runs on the mesh

joblib itself is needed only when registering (``pip install joblib``).
"""

from __future__ import annotations


def register_mesh() -> None:
    """Register the mesh backend with joblib under the names ``"mesh"`` and ``"ray"``."""
    try:
        from joblib.parallel import register_parallel_backend
    except ImportError:
        raise ImportError("the mesh joblib backend needs joblib: pip install joblib") from None
    from .backend import MeshBackend

    register_parallel_backend("mesh", MeshBackend)
    register_parallel_backend("ray", MeshBackend)


register_ray = register_mesh
"""Ray's name for ``register_mesh``."""

__all__ = ["register_mesh", "register_ray"]
