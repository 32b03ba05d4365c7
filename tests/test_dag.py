"""The lazy DAG API, as in Ray's ray.dag: bind, InputNode, execute."""

from __future__ import annotations

import collections

import pytest

import meshcompute as mesh
from meshcompute.dag import DAGInputData, InputNode, MultiOutputNode

pytestmark = pytest.mark.timeout(60)


@mesh.remote
def square(x):
    return x * x


@mesh.remote
def add(a, b=0):
    return a + b


@mesh.remote
def count_runs(path):
    with open(path, "a") as f:
        f.write("x")
    return 1


@mesh.remote
class Counter:
    def __init__(self, start):
        self.value = start

    def inc(self, by=1):
        self.value += by
        return self.value

    def pair(self, a, b):
        return [a, b]


def test_functions_and_the_input(node):
    with InputNode() as inp:
        dag = add.bind(square.bind(inp), inp)
    ref = dag.execute(3)
    assert isinstance(ref, mesh.ObjectRef) and mesh.get(ref, timeout=30) == 12
    assert mesh.get(dag.execute(4), timeout=30) == 20  # a graph runs again, with new tasks
    assert mesh.get(add.bind(1, b=square.bind(5)).execute(), timeout=30) == 26  # no input at all


def test_parts_of_the_input(node):
    with InputNode() as inp:
        dag = MultiOutputNode([add.bind(inp[0], inp[1]), square.bind(inp.k), square.bind(inp["k"])])
    refs = dag.execute(2, 5, k=3)
    assert mesh.get(refs, timeout=30) == [7, 9, 9]
    Point = collections.namedtuple("Point", "x y")
    with InputNode() as inp:
        one = add.bind(inp.x, inp.y)  # a single value: its attributes
    assert mesh.get(one.execute(Point(1, 2)), timeout=30) == 3
    assert DAGInputData(1, a=2)[0] == 1 and DAGInputData(1, a=2)["a"] == 2


def test_a_shared_node_runs_once_per_execute(node, tmp_path):
    path = str(tmp_path / "runs")
    once = count_runs.bind(path)
    dag = add.bind(once, once)
    assert mesh.get(dag.execute(), timeout=30) == 2
    assert open(path).read() == "x"


def test_actors_and_their_methods(node):
    with InputNode() as inp:
        counter = Counter.bind(10)
        dag = MultiOutputNode([counter.inc.bind(inp), counter.inc.options(num_returns=1).bind(by=inp)])
    a, b = dag.execute(5)
    assert sorted(mesh.get([a, b], timeout=30)) == [15, 20]  # one actor, called twice, in order
    handle = Counter.bind(0).execute()
    assert isinstance(handle, mesh.ActorHandle) and mesh.get(handle.inc.remote(), timeout=30) == 1
    live = Counter.remote(100)
    assert mesh.get(live.inc.bind(square.bind(2)).execute(), timeout=30) == 104  # a live actor's method
    with pytest.raises(AttributeError, match="no method"):
        _ = Counter.bind(0).no_such_method


def test_nodes_nested_in_arguments_arrive_as_refs(node):
    got = mesh.get(Counter.bind(0).pair.bind([square.bind(3)], square.bind(4)).execute(), timeout=30)
    nested, top = got
    assert isinstance(nested[0], mesh.ObjectRef) and mesh.get(nested[0], timeout=30) == 9 and top == 16


def test_options_travel_with_the_bound_call(node):
    @mesh.remote
    def where():
        return mesh.get_runtime_context().get_task_name()

    assert mesh.get(where.options(name="named").bind().execute(), timeout=30) == "named"
