"""A program in the shape of Ray's state API documentation example ("Monitoring with the
CLI or SDK"), with one change: ``import ray`` became ``import meshcompute as ray`` (so
``from ray.util.state import ...`` reads ``from meshcompute.util.state import ...``).
The tasks sleep seconds, not minutes.  Run as a script; prints OK."""

import time

import numpy as np

import meshcompute as ray
from meshcompute.util.state import (
    list_actors,
    list_jobs,
    list_nodes,
    list_objects,
    list_placement_groups,
    list_tasks,
    summarize_tasks,
)

ray.init(num_cpus=4)


@ray.remote
def task_running_5_seconds():
    time.sleep(5)


@ray.remote
class Actor:
    def __init__(self):
        pass

    def ping(self):
        return ray.get_runtime_context().get_job_id()


# Create 2 tasks
tasks = [task_running_5_seconds.remote() for _ in range(2)]

# Create 2 actors
actors = [Actor.remote() for _ in range(2)]
job_id = ray.get_runtime_context().get_job_id()
assert ray.get([a.ping.remote() for a in actors]) == [job_id, job_id]


def until(check, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout} s: {check()}")


# Summarize all tasks: the two sleeping tasks run.
summary = until(lambda: summarize_tasks()["cluster"]["summary"].get("task_running_5_seconds"))
until(lambda: summarize_tasks()["cluster"]["summary"]["task_running_5_seconds"]["state_counts"] == {"RUNNING": 2})
print(summarize_tasks())

# List all actors, then only the alive ones.
print(list_actors())
alive = list_actors(filters=[("state", "=", "ALIVE")])
assert len(alive) == 2 and {a["class_name"] for a in alive} == {"Actor"}, alive
assert all(a.job_id == job_id and a.pid for a in alive), alive  # attributes read too

# List the running tasks, with every field.
running = list_tasks(filters=[("state", "=", "RUNNING")], detail=True)
assert [t["name"] for t in running] == ["task_running_5_seconds"] * 2, running
assert all(t["job_id"] == job_id and t["start_time_ms"] for t in running), running

# Objects in the store (values over 100 KiB), nodes, jobs, placement groups.
ref = ray.put(np.zeros(1 << 20, dtype=np.uint8))
assert [o["object_id"] for o in list_objects()] == [ref.hex()]
nodes = list_nodes()
assert len(nodes) == 1 and nodes[0]["state"] == "ALIVE" and nodes[0]["resources_total"]["CPU"] == 4
jobs = list_jobs(filters=[("status", "=", "RUNNING")])
assert [j["job_id"] for j in jobs] == [job_id], jobs
assert list_placement_groups() == []

ray.get(tasks)
until(lambda: summarize_tasks()["cluster"]["summary"]["task_running_5_seconds"]["state_counts"] == {"FINISHED": 2})
print("OK")
