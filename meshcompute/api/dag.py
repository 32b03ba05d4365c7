"""Lazy task graphs, as Ray's ``ray.dag``: build with ``.bind()``, run with ``.execute()``.

``f.bind(x)`` records a call of a remote function instead of making it;
``Cls.bind(...)`` an actor, and ``node.method.bind(...)`` (or ``handle.method.bind``)
a call of one of its methods. Nodes passed as arguments are the edges.
``with InputNode() as inp:`` stands for what ``execute`` is given::

    with InputNode() as inp:
        dag = add.bind(square.bind(inp), inp)
    ref = dag.execute(3)          # square.remote(3), then add.remote(<its ref>, 3)

``execute`` submits every node once, children first, passing each node's result to
the nodes that use it: a top-level argument that is a node gets its value (the task
waits for it, as with any ref), one nested in a list or dict gets its ref. It returns
the root's result: a ref, an actor handle for a class node, a list for a
``MultiOutputNode``. Each ``execute`` makes its own tasks and actors. (Ray's compiled
graphs, ``experimental_compile``, are not provided.)
"""

from __future__ import annotations

from typing import Any

__all__ = ["DAGNode", "FunctionNode", "ClassNode", "ClassMethodNode", "InputNode", "InputAttributeNode",
           "MultiOutputNode", "DAGInputData"]


class DAGNode:
    """One call in a graph: what it calls, with which arguments (other nodes among them)."""

    def __init__(self, args: tuple, kwargs: dict, options: dict | None = None) -> None:
        self._bound_args = tuple(args)
        self._bound_kwargs = dict(kwargs)
        self._bound_options = dict(options or {})

    def get_args(self) -> tuple:
        return self._bound_args

    def get_kwargs(self) -> dict:
        return self._bound_kwargs

    def get_options(self) -> dict:
        return self._bound_options

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Submit the graph under this node; ``args``/``kwargs`` are what its InputNode stands for."""
        return _Execution(args, kwargs).result(self)

    def _run(self, execution: _Execution, args: list, kwargs: dict) -> Any:
        raise NotImplementedError


class FunctionNode(DAGNode):
    """A remote function's call (``f.bind(...)``)."""

    def __init__(self, remote_function: Any, args: tuple, kwargs: dict, options: dict | None = None) -> None:
        super().__init__(args, kwargs, options)
        self._body = remote_function

    def _run(self, execution: _Execution, args: list, kwargs: dict) -> Any:
        fn = self._body.options(**self._bound_options) if self._bound_options else self._body
        return fn.remote(*args, **kwargs)

    def __repr__(self) -> str:
        return f"FunctionNode({self._body.__name__})"


class ClassNode(DAGNode):
    """An actor's creation (``Cls.bind(...)``); ``node.method.bind(...)`` calls one of its methods."""

    def __init__(self, actor_class: Any, args: tuple, kwargs: dict, options: dict | None = None) -> None:
        super().__init__(args, kwargs, options)
        self._body = actor_class

    def _run(self, execution: _Execution, args: list, kwargs: dict) -> Any:
        cls = self._body.options(**self._bound_options) if self._bound_options else self._body
        return cls.remote(*args, **kwargs)

    def __getattr__(self, name: str) -> _UnboundMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        if not callable(getattr(self.__dict__["_body"]._cls, name, None)):
            raise AttributeError(f"actor class {self.__dict__['_body'].__name__} has no method {name!r}")
        return _UnboundMethod(self, name, {})

    def __repr__(self) -> str:
        return f"ClassNode({self._body.__name__})"


class _UnboundMethod:
    """``class_node.method``: ``.bind(...)`` makes the call's node, ``.options(...)`` sets its options."""

    def __init__(self, parent: ClassNode, name: str, options: dict) -> None:
        self._parent, self._name, self._options = parent, name, options

    def options(self, **options: Any) -> _UnboundMethod:
        return _UnboundMethod(self._parent, self._name, dict(self._options, **options))

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        return ClassMethodNode(self._parent, self._name, args, kwargs, self._options)


class ClassMethodNode(DAGNode):
    """A call of an actor's method: of a ``ClassNode`` (the actor made by this execution) or of
    a live actor (``handle.method.bind(...)``)."""

    def __init__(self, actor: Any, method: str, args: tuple, kwargs: dict, options: dict | None = None) -> None:
        super().__init__(args, kwargs, options)
        self._actor, self._method_name = actor, method

    def get_method_name(self) -> str:
        return self._method_name

    def _run(self, execution: _Execution, args: list, kwargs: dict) -> Any:
        handle = execution.result(self._actor) if isinstance(self._actor, DAGNode) else self._actor
        method = getattr(handle, self._method_name)
        if self._bound_options:
            method = method.options(**self._bound_options)
        return method.remote(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ClassMethodNode({self._method_name})"


class DAGInputData:
    """What ``execute`` was given when it was not one positional value: ``[i]`` is its i-th
    positional argument, ``["name"]`` (or ``.name`` on the node) its keyword argument ``name``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = list(args), kwargs

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            return self._args[key]
        if isinstance(key, str):
            return self._kwargs[key]
        raise ValueError(f"use an int index or a str name to read the DAG's input, not {key!r}")


class InputNode(DAGNode):
    """Stands for what ``execute`` is given: the value itself when it is one positional value,
    else a ``DAGInputData``. Use it as ``with InputNode() as inp:``; ``inp[0]``, ``inp["k"]``
    and ``inp.k`` stand for a part of it."""

    def __init__(self) -> None:
        super().__init__((), {})

    def __enter__(self) -> InputNode:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def __getitem__(self, key: int | str) -> InputAttributeNode:
        return InputAttributeNode(self, key, "__getitem__")

    def __getattr__(self, name: str) -> InputAttributeNode:
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(self, name, "__getattr__")

    def _run(self, execution: _Execution, args: list, kwargs: dict) -> Any:
        given, given_kw = execution.input
        if len(given) == 1 and not given_kw:
            return given[0]
        return DAGInputData(*given, **given_kw)

    def __repr__(self) -> str:
        return "InputNode()"


class InputAttributeNode(DAGNode):
    """A part of the DAG's input: ``inp[0]``, ``inp["k"]`` or ``inp.k``."""

    def __init__(self, input_node: InputNode, key: int | str, accessor: str) -> None:
        super().__init__((), {})
        self._input, self._key, self._accessor = input_node, key, accessor

    def _run(self, execution: _Execution, args: list, kwargs: dict) -> Any:
        value = execution.result(self._input)
        if isinstance(value, DAGInputData) or isinstance(self._key, int) or self._accessor == "__getitem__":
            return value[self._key]
        return getattr(value, self._key)

    def __repr__(self) -> str:
        return f"InputAttributeNode({self._key!r})"


class MultiOutputNode(DAGNode):
    """Several roots at once: ``execute`` returns the list of their results."""

    def __init__(self, nodes: list) -> None:
        super().__init__((list(nodes),), {})

    def _run(self, execution: _Execution, args: list, kwargs: dict) -> Any:
        return list(args[0])

    def __repr__(self) -> str:
        return f"MultiOutputNode({len(self._bound_args[0])})"


class _Execution:
    """One ``execute``: every node's result, made once, children first."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.input = (list(args), dict(kwargs))
        self._done: dict[int, Any] = {}
        self._keep: list = []  # the nodes of this execution, so that their ids stay theirs

    def result(self, node: DAGNode) -> Any:
        key = id(node)
        if key not in self._done:
            args = [self._resolve(a) for a in node._bound_args]
            kwargs = {k: self._resolve(v) for k, v in node._bound_kwargs.items()}
            self._keep.append(node)
            self._done[key] = node._run(self, args, kwargs)
        return self._done[key]

    def _resolve(self, value: Any) -> Any:
        """An argument with the nodes in it replaced by their results (in lists, tuples, dicts too)."""
        if isinstance(value, DAGNode):
            return self.result(value)
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        if isinstance(value, tuple):
            items = [self._resolve(v) for v in value]
            return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # a namedtuple, or not
        if isinstance(value, dict):
            return {k: self._resolve(v) for k, v in value.items()}
        return value
