"""``MeshBackend``: joblib's batches run by a ``util.multiprocessing.Pool`` of mesh actors.

Large numpy arguments travel as joblib's own process backends treat them: an array
over ``max_nbytes`` (joblib's default: 1 MB) is stored once in the object store
for the whole ``Parallel`` call, instead of once per batch, and workers read it
zero-copy and read-only (``mmap_mode="r"``, joblib's default) or as a private copy
(``mmap_mode="c"``).
"""

from __future__ import annotations

from typing import Any

from joblib.parallel import AutoBatchingMixin, FallbackToBackend, ParallelBackendBase, SequentialBackend

from ...api.session import cluster_resources, get, init, is_initialized, put
from ..multiprocessing import Pool

# Parallel's own settings, handed to every backend's configure(); not options of this one.
_JOBLIB_SETTINGS = {"prefer", "require", "verbose", "context"}


class _Shared:
    """Stands for a large array in a batch: the ref to its stored copy."""

    __slots__ = ("ref", "copy")

    def __init__(self, ref: Any, copy: bool) -> None:
        self.ref = ref
        self.copy = copy


class _SharedArgsCall:
    """Runs a joblib batch after putting its shared arrays back in place (on the worker)."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def __call__(self) -> Any:
        refs = {}
        for _, args, kwargs in self.batch.items:
            for v in (*args, *kwargs.values()):
                if isinstance(v, _Shared):
                    refs[v.ref] = v
        values = dict(zip(refs, get(list(refs))))

        def back(v: Any) -> Any:
            if not isinstance(v, _Shared):
                return v
            value = values[v.ref]
            return value.copy() if v.copy else value

        self.batch.items = [(f, [back(a) for a in args], {k: back(v) for k, v in kwargs.items()})
                            for f, args, kwargs in self.batch.items]
        return self.batch()


class _ThreadLimitedCall:
    """Runs a batch with native thread pools (BLAS, OpenMP) capped, for ``inner_max_num_threads``."""

    def __init__(self, func: Any, limit: int) -> None:
        self.func = func
        self.limit = limit

    def __call__(self) -> Any:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.limit):
            return self.func()


def _cpus() -> int:
    if not is_initialized():
        init()
    return max(1, int(cluster_resources().get("CPU", 1)))


class MeshBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend whose workers are mesh processes (``n_jobs=-1``: every CPU of the mesh).

    Backend options (``parallel_backend("mesh", ray_remote_args={...})`` or ``Parallel(...)``):
    ``ray_remote_args``, actor options for the workers, e.g. ``{"num_cpus": 1}``.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False
    uses_threads = False

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 ray_remote_args: dict[str, Any] | None = None, **unknown: Any) -> None:
        if unknown:
            raise ValueError(f"unknown option(s) for the mesh joblib backend: {', '.join(sorted(unknown))}; "
                             "it takes ray_remote_args")
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._remote_args = ray_remote_args
        self._pool: Pool | None = None
        self._shared: dict[int, tuple[Any, Any]] = {}  # id(array) -> (array, ref), for one Parallel call
        self._config: dict[str, Any] = {}

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Workers for ``n_jobs``: as asked, or counted back from the mesh's CPUs when negative."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(_cpus() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, ray_remote_args: dict[str, Any] | None = None,
                  max_nbytes: int | None = None, mmap_mode: str | None = "r", temp_folder: str | None = None,
                  **settings: Any) -> int:
        """Start the pool for one ``Parallel`` call; returns its number of workers.

        ``max_nbytes`` and ``mmap_mode`` are joblib's (arrays over ``max_nbytes`` are shared
        through the object store, read-only or copied); the other settings joblib passes
        every backend only steer its own choice of backend.
        """
        unknown = set(settings) - _JOBLIB_SETTINGS
        if unknown:
            raise ValueError(f"unknown option(s) for the mesh joblib backend: {', '.join(sorted(unknown))}")
        if mmap_mode not in (None, "r", "c"):
            raise ValueError(f"mmap_mode={mmap_mode!r} is not supported by the mesh backend: workers cannot "
                             "write into this process's arrays; use 'r' (read-only, shared) or 'c' (a copy)")
        if temp_folder is not None:
            raise ValueError("temp_folder does not apply to the mesh backend: large arrays go through the "
                             "object store, not files")
        if self.inner_max_num_threads is not None:
            try:
                import threadpoolctl  # noqa: F401  (workers cap their thread pools with it)
            except ImportError:
                raise ImportError("inner_max_num_threads needs threadpoolctl: pip install threadpoolctl") from None
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._config = dict(n_jobs=n_jobs, ray_remote_args=ray_remote_args, max_nbytes=max_nbytes,
                            mmap_mode=mmap_mode)
        self._max_nbytes = max_nbytes if mmap_mode is not None else None
        self._copy = mmap_mode == "c"
        self._pool = Pool(n_jobs, ray_remote_args=ray_remote_args or self._remote_args)
        return n_jobs

    def submit(self, func: Any, callback: Any = None) -> Any:
        """Run one batch on the pool; ``callback`` gets the outcome, success or failure."""
        func = self._share_large_args(func)
        if self.inner_max_num_threads is not None:
            func = _ThreadLimitedCall(func, self.inner_max_num_threads)
        return self._pool.apply_async(func, callback=lambda value: callback(("ok", value)),
                                      error_callback=lambda error: callback(("error", error)))

    apply_async = submit  # the name older joblib versions call

    def retrieve_result_callback(self, out: tuple[str, Any]) -> Any:
        """The batch's result, or its exception raised."""
        kind, value = out
        if kind == "error":
            raise value
        return value

    def _share_large_args(self, batch: Any) -> Any:
        if self._max_nbytes is None or not isinstance(getattr(batch, "items", None), list):
            return batch
        import numpy as np

        found = False

        def share(v: Any) -> Any:
            nonlocal found
            if not isinstance(v, np.ndarray) or v.nbytes <= self._max_nbytes:
                return v
            held = self._shared.get(id(v))
            if held is None:  # the array is kept in held[0], so its id stays its own
                held = self._shared[id(v)] = (v, put(v))
            found = True
            return _Shared(held[1], self._copy)

        batch.items = [(f, [share(a) for a in args], {k: share(v) for k, v in kwargs.items()})
                       for f, args, kwargs in batch.items]
        return _SharedArgsCall(batch) if found else batch

    def terminate(self) -> None:
        """End of a ``Parallel`` call: stop the workers, forget the shared arrays."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
        self._shared.clear()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A batch failed: stop everything, and start afresh if joblib will submit again."""
        self.terminate()
        if ensure_ready:
            self.configure(parallel=self.parallel, **self._config)
