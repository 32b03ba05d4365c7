"""The Kubernetes manifests (deploy/kubernetes/) and the Helm chart (deploy/helm/meshcompute/,
rendered by tests/helmlite.py) are valid against Kubernetes' schemas, and say what the node
needs: the headless service it joins through, the founder's name, probes that exist, /dev/shm
in memory, a budget that keeps the voters' majority, the image's user and command."""

from __future__ import annotations

import pathlib
import re

import pytest
import yaml

from meshcompute.cli import app

from .helmlite import TemplateError, render_chart

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
CHART = ROOT / "deploy" / "helm" / "meshcompute"
K8S_VERSIONS = ("1.28.0", "1.30.0")  # the oldest still widely run, and a recent one
TOKEN = {"token": {"value": "t" * 43}}


def plain() -> list[dict]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, [d["kind"] for d in docs]
    return found[0]


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


RENDERINGS = {
    "plain manifests": plain,
    "chart, defaults": lambda: render_chart(CHART, TOKEN),
    "chart, everything on": lambda: render_chart(CHART, {**TOKEN, "autoscaling": {"enabled": True},
                                                         "job": {"enabled": True}}, release="prod"),
    "chart, existing secret, no metrics": lambda: render_chart(CHART, {"token": {"existingSecret": "mine"},
                                                                       "metrics": {"enabled": False}}),
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", RENDERINGS)
def test_every_object_is_valid_against_the_kubernetes_schema(name, version):
    docs = RENDERINGS[name]()
    assert {"StatefulSet", "Service", "PodDisruptionBudget"} <= {d["kind"] for d in docs}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises with the offending field


@pytest.mark.parametrize("name", RENDERINGS)
def test_the_statefulset_joins_through_its_headless_service_with_probes_that_exist(name):
    docs = RENDERINGS[name]()
    sts, svc = by_kind(docs, "StatefulSet"), by_kind(docs, "Service")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    pod = sts["spec"]["template"]["spec"]
    (node,) = pod["containers"]
    env = env_of(node)
    mesh_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "mesh")
    assert env["MESH_JOIN"] == f"{svc['metadata']['name']}:{mesh_port}" and env["MESH_PORT"] == str(mesh_port)
    assert env["MESH_FOUNDER"] == f"{sts['metadata']['name']}-0"  # the StatefulSet's first pod
    assert env["MESH_HOST"] == "$(POD_IP)" and env["MESH_TOKEN"]["secretKeyRef"]["key"] == "token"
    assert node["args"] == ["mesh-node"]
    assert "MESH_NUM_CPUS" not in env and "MESH_OBJECT_STORE_MEMORY" not in env  # from the cgroup limits
    assert node["resources"]["requests"] == node["resources"]["limits"]
    # Probes: `mesh status --local --check`, flags that the CLI has.
    status_flags = {o for p in _command("status").params for o in p.opts}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = node[probe]["exec"]["command"]
        assert cmd[:4] == ["mesh", "status", "--local", "--check"], cmd
        assert {c for c in cmd if c.startswith("--")} <= status_flags
    assert "--alive" in node["livenessProbe"]["exec"]["command"]
    assert "--alive" not in node["readinessProbe"]["exec"]["command"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in node["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert env["MESH_SPILL_DIR"] in mounts and "/tmp" in mounts
    assert node["securityContext"]["readOnlyRootFilesystem"] is True


def _command(name: str):
    import typer

    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", RENDERINGS)
def test_the_disruption_budget_keeps_a_majority_of_three_voters(name):
    docs = RENDERINGS[name]()
    pdb, sts = by_kind(docs, "PodDisruptionBudget"), by_kind(docs, "StatefulSet")
    assert pdb["spec"]["maxUnavailable"] == 1  # 3 voters (the default): 2 stay up
    assert pdb["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    voters = int(env_of(sts["spec"]["template"]["spec"]["containers"][0]).get("MESH_VOTERS", "3"))
    assert voters - pdb["spec"]["maxUnavailable"] > voters // 2


def test_the_pods_run_as_the_images_user_and_every_mesh_variable_is_read():
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER (\d+)", dockerfile, re.M)[-1]
    source = "\n".join(p.read_text() for p in (ROOT / "meshcompute").rglob("*.py"))
    for name, render in RENDERINGS.items():
        for doc in render():
            if doc["kind"] in ("StatefulSet", "Job"):
                pod = doc["spec"]["template"]["spec"]
                assert str(pod["securityContext"]["runAsUser"]) == user, name
                for c in pod["containers"]:
                    assert c["args"][0] == "mesh-node"
                    for var in env_of(c):
                        assert var == "POD_IP" or f'"{var}"' in source, f"{name}: {var} is read by nothing"


def test_the_job_runs_a_driver_through_mesh_node_on_a_node_of_no_cpu():
    for docs in (plain(), RENDERINGS["chart, everything on"]()):
        job = by_kind(docs, "Job")
        (c,) = job["spec"]["template"]["spec"]["containers"]
        env = env_of(c)
        assert c["args"][0] == "mesh-node" and len(c["args"]) > 1
        assert env["MESH_NUM_CPUS"] == "0" and env["MESH_JOIN"].endswith(":7777")
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    driver = by_kind(plain(), "ConfigMap")["data"]["driver.py"]
    compile(driver, "driver.py", "exec")


def test_the_chart_wants_a_token_and_takes_an_existing_secret():
    with pytest.raises(TemplateError, match="token.value is required"):
        render_chart(CHART)
    docs = render_chart(CHART, {"token": {"existingSecret": "mine"}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    env = by_kind(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert next(e for e in env if e["name"] == "MESH_TOKEN")["valueFrom"]["secretKeyRef"]["name"] == "mine"
    secret = by_kind(render_chart(CHART, TOKEN), "Secret")
    import base64

    assert base64.b64decode(secret["data"]["token"]).decode() == "t" * 43


def test_autoscaling_leaves_replicas_to_the_hpa_and_asks_for_the_demand_metric():
    docs = render_chart(CHART, {**TOKEN, "autoscaling": {"enabled": True, "maxReplicas": 7}})
    hpa, sts = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "StatefulSet")
    assert "replicas" not in sts["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": sts["metadata"]["name"]}
    assert hpa["spec"]["maxReplicas"] == 7
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "mesh_cpus_wanted"
    assert "as: mesh_cpus_wanted" in (ROOT / "docs" / "operating.md").read_text()  # the adapter's rule


def test_helmlite_renders_the_subset_and_refuses_the_rest():
    from .helmlite import render

    scope = {"Values": {"a": {"b": 2}, "s": "x", "m": {"k": "v"}, "e": ""}, "Release": {"Name": "r"}, "Chart": {}}
    assert render("n: {{ .Values.a.b }}-{{ .Release.Name }}", scope) == "n: 2-r"
    assert render("{{- if .Values.e }}\nyes\n{{- else }}\nno\n{{- end }}\n", scope) == "\nno\n"
    assert render("k:\n  {{- toYaml .Values.m | nindent 2 }}", scope) == "k:\n  k: v"
    assert render('{{ .Values.e | default "d" | quote }}', scope) == '"d"'
    for bad in ("{{ .Values.nope }}", "{{ range .Values.m }}{{ end }}", "{{ printf \"%s\" .Values.s }}",
                "{{ if .Values.s }}"):
        with pytest.raises(TemplateError):
            render(bad, scope)
