"""``meshcompute.cloudpickle``: the cloudpickle meshcompute pickles functions and classes with
(Ray's ``ray.cloudpickle``), e.g. ``meshcompute.cloudpickle.dumps(fn)``; it is the
installed ``cloudpickle`` package itself, re-exported."""

from __future__ import annotations

from cloudpickle import *  # noqa: F403
from cloudpickle import (  # noqa: F401  (the names Ray's docs use, explicitly)
    CloudPickler,
    dump,
    dumps,
    load,
    loads,
    register_pickle_by_value,
    unregister_pickle_by_value,
)
