"""Programs in the shape of Ray Core's documentation examples for the less common parts of
its API (the DAG API, runtime context, actor exit, async actors, task cancellation), with
one change: ``import ray`` became ``import meshcompute as ray``.  Run as a script; prints OK."""

import asyncio
import time

import meshcompute as ray
from meshcompute.dag.input_node import InputNode

ray.init(num_cpus=2)

# --- Lazy computation graphs (ray.dag) ---------------------------------------
@ray.remote
def func(src, inc=1):
    return src + inc

a_ref = func.bind(1, inc=2)
assert ray.get(a_ref.execute()) == 3
b_ref = func.bind(a_ref, inc=3)
assert ray.get(b_ref.execute()) == 6
c_ref = func.bind(b_ref, inc=a_ref)
assert ray.get(c_ref.execute()) == 9


@ray.remote
class Actor:
    def __init__(self, init_value):
        self.i = init_value

    def inc(self, x):
        self.i += x

    def get(self):
        return self.i

a1 = Actor.bind(10)
val = a1.get.bind()
assert ray.get(val.execute()) == 10


@ray.remote
def combine(x, y):
    return x + y

a2 = Actor.bind(10)
a1.inc.bind(2)
a1.inc.bind(4)
a2.inc.bind(6)
dag = combine.bind(a1.get.bind(), a2.get.bind())
assert ray.get(dag.execute()) == 20


@ray.remote
def a(user_input):
    return user_input * 2

@ray.remote
def b(user_input):
    return user_input + 1

@ray.remote
def c(x, y):
    return x + y

with InputNode() as dag_input:
    a_ref = a.bind(dag_input)
    b_ref = b.bind(dag_input)
    dag = c.bind(a_ref, b_ref)

assert ray.get(dag.execute(2)) == 7

# --- Runtime context -----------------------------------------------------------
@ray.remote
def get_task_name():
    return ray.get_runtime_context().get_task_name()

assert ray.get(get_task_name.remote()) == "get_task_name"
assert ray.get(get_task_name.options(name="task_name").remote()) == "task_name"


@ray.remote(num_cpus=1)
class ResourceActor:
    def resources(self):
        return ray.get_runtime_context().get_assigned_resources()

assert ray.get(ResourceActor.remote().resources.remote()) == {"CPU": 1.0}

# --- Terminating an actor from within ------------------------------------------
@ray.remote
class Exiter:
    def exit(self):
        ray.actor.exit_actor()

actor = Exiter.remote()
try:
    ray.get(actor.exit.remote())
    raise AssertionError("exit_actor() returned")
except ray.exceptions.RayActorError:
    pass

# --- AsyncIO actors and refs as futures ----------------------------------------
@ray.remote
class AsyncActor:
    async def __init__(self):
        self.ready = True

    async def run_concurrent(self):
        await asyncio.sleep(0.2)
        return self.ready

async_actor = AsyncActor.remote()
assert ray.get([async_actor.run_concurrent.remote() for _ in range(4)]) == [True] * 4


@ray.remote
def some_task():
    return 1

async def await_obj_ref():
    await some_task.remote()
    return await asyncio.gather(*[some_task.remote() for _ in range(3)])

assert asyncio.run(await_obj_ref()) == [1, 1, 1]

# --- Cancelling an async actor task ---------------------------------------------
@ray.remote
class Sleeper:
    async def f(self):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            print("Actor task canceled.")
            raise

sleeper = Sleeper.remote()
ref = sleeper.f.remote()
time.sleep(1)
ray.cancel(ref)
try:
    ray.get(ref)
    raise AssertionError("the task was not cancelled")
except ray.exceptions.TaskCancelledError:
    pass

# --- An ObjectRef from its hex id ---------------------------------------------------
ref = ray.put("value")
assert ray.get(ray.ObjectRef.from_hex(ref.hex())) == "value"

ray.shutdown()
print("OK")
