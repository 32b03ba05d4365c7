"""The layout is the architecture: no import runs from a lower layer to a higher one.

Layers, bottom up (a module may import its own package and anything below):

0. ``exceptions``
1. pure cores: ``sched``, ``store``, ``raft``, ``gossip`` (not their shells), and ``wire``
   (message definitions, serialization, transport): no process, thread or node knowledge;
   then ``gcs``, the control store's state machine on top of ``raft``;
   then ``store.shm``, the shared-memory mapping helpers (with their warming threads)
2. ``host``: this machine's session directories and node launcher
3. ``observe``: monitor feed, output shipping, timeline, logs, ``mesh top``
4. ``owner``: the driver/worker runtime (its state objects and its I/O thread)
5. ``worker``; the shells of the cores: ``gossip.shell``, ``gcs.shell``
6. ``node``: the daemon
7. ``api``: the user-facing functions and classes
8. ``kv``, ``util``, ``actor``, ``cloudpickle``, ``dag``, ``experimental``: public modules built on ``api``
9. ``meshcompute`` itself (the public names)
10. ``cli``, ``testing``

Pure cores also import nothing of the shells, sockets or threads: they take the
clock and randomness as arguments.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "meshcompute"

LAYERS = {
    "exceptions": 0,
    "sched": 1, "store": 1, "raft": 1, "gossip": 1, "wire": 1, "gcs": 1.5, "store.shm": 1.7,
    "host": 2, "observe": 3, "owner": 4,
    "worker": 5, "gossip.shell": 5, "gcs.shell": 5,
    "node": 6, "api": 7, "kv": 8, "util": 8, "job_submission": 8, "actor": 8, "cloudpickle": 8, "dag": 8, "experimental": 8,
    "": 9, "cli": 10, "testing": 10,
}
PURE = ("sched", "store", "raft", "gossip", "gcs")
SHELLS = ("gossip.shell", "gcs.shell", "store.shm")
# What a pure core may not import: it would hold sockets, threads or another process's state.
IMPURE_IMPORTS = {"zmq", "socket", "threading", "psutil", "subprocess"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_key(module: str) -> str:
    for shell in SHELLS:
        if module == shell or module.startswith(shell + "."):
            return shell
    return module.split(".")[0] if module else ""


def _module_or_package(package: list[str], name: str) -> str:
    """``package.name`` when that is a module or package, else ``package`` (a name defined in it)."""
    where = ROOT.joinpath(*package, name)
    if where.with_suffix(".py").exists() or (where / "__init__.py").exists():
        return ".".join(package + [name])
    return ".".join(package)


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute module inside meshcompute, '' for the package) of every import."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [_module_or_package(base, a.name) for a in node.names]
                out.extend((node.lineno, n) for n in names)
            elif node.module and node.module.startswith("meshcompute"):
                out.append((node.lineno, node.module[len("meshcompute."):] if "." in node.module else ""))
            elif node.module:
                out.append((node.lineno, "!" + node.module.split(".")[0]))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("meshcompute"):
                    out.append((node.lineno, a.name[len("meshcompute."):] if "." in a.name else ""))
                else:
                    out.append((node.lineno, "!" + a.name.split(".")[0]))
    return out


FILES = sorted(ROOT.rglob("*.py"))


def test_every_package_has_a_layer():
    for path in FILES:
        key = _layer_key(_module_name(path))
        assert key in LAYERS, f"{path}: package {key!r} has no layer in tests/test_layering.py"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_upward(path):
    me = _layer_key(_module_name(path))
    for line, target in _imports(path):
        if target.startswith("!"):
            continue
        them = _layer_key(target)
        if them == me:
            continue
        assert LAYERS[them] < LAYERS[me], (
            f"{path.relative_to(ROOT)}:{line} imports {target or 'meshcompute'} "
            f"(layer {LAYERS[them]}) from layer {LAYERS[me]}")


@pytest.mark.parametrize("path", [p for p in FILES if _layer_key(_module_name(p)) in PURE],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_cores_import_no_shell_socket_or_thread(path):
    for line, target in _imports(path):
        if target.startswith("!"):
            assert target[1:] not in IMPURE_IMPORTS, f"{path.relative_to(ROOT)}:{line} imports {target[1:]}"
            continue
        assert _layer_key(target) in PURE + ("exceptions",), (
            f"{path.relative_to(ROOT)}:{line} imports {target} from a pure core")


def test_sched_takes_clock_and_randomness_as_arguments():
    for path in (ROOT / "sched").glob("*.py"):
        for line, target in _imports(path):
            assert target not in ("!time", "!os"), f"{path.name}:{line} imports {target[1:]}"


@pytest.mark.parametrize("modules", [
    "meshcompute",  # a driver
    "meshcompute.owner.runtime, meshcompute.worker.executor, meshcompute.worker.main",  # what the zygote preloads
    "meshcompute.node.daemon",
])
def test_processes_do_not_import_what_few_use(modules):
    """asyncio and ssl (7 MiB of every process's resident size), prometheus_client with its
    HTTP server: imported only where used (async actors, `await ref`, a metrics port)."""
    import subprocess
    import sys

    code = (f"import sys, importlib\nfor m in {modules!r}.split(', '): importlib.import_module(m)\n"
            "print(' '.join(m for m in ('asyncio', 'ssl', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{modules} imports {out.stdout.strip()}"
