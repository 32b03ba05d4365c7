"""Programs in the shape of Ray Core's documentation examples for generators
(``num_returns="streaming"``/``"dynamic"``) and runtime environments, with one change:
``import ray`` became ``import meshcompute as ray``.  Run as a script; prints OK."""

import asyncio
import os
import sys
import tempfile
import time

import numpy as np

import meshcompute as ray

ray.init(num_cpus=2)

# --- Ray generators: num_returns="streaming" ---------------------------------
@ray.remote(num_returns="streaming")
def task():
    for i in range(5):
        time.sleep(0.1)
        yield i


gen = task.remote()
assert ray.get(next(gen)) == 0  # the first value, before the task ends
assert [ray.get(ref) for ref in gen] == [1, 2, 3, 4]


@ray.remote
class Actor:
    def f(self):
        yield from range(5)


actor = Actor.remote()
assert [ray.get(ref) for ref in actor.f.options(num_returns="streaming").remote()] == list(range(5))


@ray.remote(num_returns="streaming")
def failing():
    for i in range(5):
        if i == 2:
            raise ValueError
        yield i


seen = []
for ref in failing.remote():
    try:
        seen.append(ray.get(ref))
    except ValueError:
        seen.append("ValueError")
assert seen == [0, 1, "ValueError"]


async def async_consume():
    return [await ref async for ref in task.remote()]


assert asyncio.run(async_consume()) == list(range(5))


# --- Dynamic generators: num_returns="dynamic" --------------------------------
@ray.remote(num_returns="dynamic")
def split(array, chunk_size):
    while len(array) > 0:
        yield array[:chunk_size]
        array = array[chunk_size:]


dynamic_ref = split.remote(np.zeros(10), 3)
assert [len(ray.get(ref)) for ref in ray.get(dynamic_ref)] == [3, 3, 3, 1]


# --- Runtime environments -----------------------------------------------------
@ray.remote
def myfunc():
    return os.environ.get("FOO")


assert ray.get(myfunc.options(runtime_env={"env_vars": {"FOO": "bar"}}).remote()) == "bar"

with tempfile.TemporaryDirectory() as working_dir:
    with open(os.path.join(working_dir, "hello.txt"), "w") as f:
        f.write("Hello World!")
    with open(os.path.join(working_dir, "helper.py"), "w") as f:
        f.write("def greet():\n    return 'hi from helper'\n")

    @ray.remote(runtime_env={"working_dir": working_dir})
    def read_file_and_import():
        import helper

        with open("hello.txt") as f:
            return f.read(), helper.greet()

    assert ray.get(read_file_and_import.remote()) == ("Hello World!", "hi from helper")

ray.shutdown()
print("OK", file=sys.stdout)
