"""runtime_env={"pip": [...]}: each environment is installed once per node into a virtualenv
that sees the node's packages, and its tasks run on workers of their own.

The packages are wheels made here, so nothing is downloaded."""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

import pytest

import meshcompute as mesh
from meshcompute.exceptions import RuntimeEnvSetupError

pytestmark = pytest.mark.timeout(240)


def make_wheel(directory, name: str, version: str, body: str) -> str:
    """A minimal pure-Python wheel of one module ``name``."""
    path = os.path.join(directory, f"{name}-{version}-py3-none-any.whl")
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": body,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            data = text.encode()
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture(scope="module")
def node():
    mesh.init(num_cpus=2)
    yield
    mesh.shutdown()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheels")
    return {
        "v1": make_wheel(d, "meshpipdemo", "1.0", "VERSION = '1.0'\n"),
        "v2": make_wheel(d, "meshpipdemo", "2.0", "VERSION = '2.0'\n"),
    }


@mesh.remote
def version():
    import meshpipdemo
    import numpy  # a package of the node's own: the environment sees it

    return meshpipdemo.VERSION, numpy.__name__, os.environ.get("MESH_PIP_ENV", "")


@mesh.remote
def importable():
    try:
        import meshpipdemo  # noqa: F401
    except ImportError:
        return False
    return True


@mesh.remote
def child_version():
    return mesh.get(version.remote())


def test_each_environment_has_its_packages_and_workers(node, wheels):
    v1 = version.options(runtime_env={"pip": [wheels["v1"]]})
    v2 = version.options(runtime_env={"pip": {"packages": [wheels["v2"]], "pip_check": True}})
    got1 = mesh.get([v1.remote() for _ in range(4)], timeout=200)
    got2 = mesh.get(v2.remote(), timeout=200)
    assert {g[:2] for g in got1} == {("1.0", "numpy")}
    assert got2[:2] == ("2.0", "numpy")
    assert got1[0][2] and got2[2] and got1[0][2] != got2[2]  # two environments, two pools
    # Workers of the node's own packages never see an environment's.
    assert mesh.get([importable.remote() for _ in range(4)], timeout=60) == [False] * 4
    # A task started from a task of an environment inherits it (and its workers).
    assert mesh.get(child_version.options(runtime_env={"pip": [wheels["v1"]]}).remote(),
                    timeout=200)[0] == "1.0"


@mesh.remote
def plain_parent(wheel):
    # Blocked in get, a parent runs its queued children itself, but only those of its own
    # environment: this one must wait for a worker of the child's.
    return mesh.get(version.options(runtime_env={"pip": [wheel]}).remote())[0]


def test_a_parent_without_the_environment_does_not_run_the_child_inline(node, wheels):
    assert mesh.get(plain_parent.remote(wheels["v1"]), timeout=200) == "1.0"


@mesh.remote
class Versioned:
    def version(self):
        import meshpipdemo

        return meshpipdemo.VERSION, mesh.get(version.remote())[0]


def test_an_actor_and_the_tasks_it_starts_run_in_its_environment(node, wheels):
    a = Versioned.options(runtime_env={"pip": [wheels["v2"]]}).remote()
    assert mesh.get(a.version.remote(), timeout=200) == ("2.0", "2.0")


def test_an_actor_whose_environment_cannot_be_installed_dies_saying_why(node, tmp_path):
    a = Versioned.options(runtime_env={"pip": [str(tmp_path / "none-1.0-py3-none-any.whl")]}).remote()
    with pytest.raises(mesh.exceptions.ActorDiedError, match="could not be installed"):
        mesh.get(a.version.remote(), timeout=200)


def test_an_environment_that_cannot_be_installed_fails_its_tasks(node, tmp_path):
    missing = str(tmp_path / "nothing-1.0-py3-none-any.whl")
    refs = [version.options(runtime_env={"pip": [missing]}).remote() for _ in range(3)]
    for ref in refs:
        with pytest.raises(RuntimeEnvSetupError, match="could not be installed"):
            mesh.get(ref, timeout=200)
    assert mesh.get(importable.remote(), timeout=60) is False  # the node serves on


def test_malformed_pip_options_are_refused_where_they_are_given(node, tmp_path):
    with pytest.raises(ValueError, match="pip_version"):
        version.options(runtime_env={"pip": {"packages": ["x"], "pip_version": "==23.0"}}).remote()
    with pytest.raises(ValueError, match="requirement strings"):
        version.options(runtime_env={"pip": [""]}).remote()
    with pytest.raises(ValueError, match="cannot read"):
        version.options(runtime_env={"pip": str(tmp_path / "requirements.txt")}).remote()
