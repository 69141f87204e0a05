"""deploy/kubernetes (kustomize base and overlay) and deploy/helm/dnsmesh, rendered offline
and validated against the Kubernetes schemas (kubernetes-validate ships them), then held to
the rules the manifests' comments give: every dnsmesh command accepted by the real parser,
the agent's probes on the node's loopback, a surge update, no container ports, no RBAC.

kustomize renders with `kubectl kustomize` and the chart with `helm` (scripts/install-helm);
each skips, saying so, where its tool is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dnsmesh.policyfile import load_policy_path
from tests.deploy.commands import DNSMESH_ENTRY_POINTS, parse

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy/kubernetes"
CHART = ROOT / "deploy/helm/dnsmesh"
SCHEMA_VERSION = "1.33.0"  # a release every supported cluster has the APIs of
AGENT_ADMIN = ("127.0.0.1", 9153)
Manifest = dict[str, Any]


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(ROOT / ".venv/bin"))
    if found is None:
        pytest.skip(f"no {name} here (scripts/install-helm installs helm)")
    return found


def _render(argv: list[str]) -> list[Manifest]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def kustomize(folder: str) -> list[Manifest]:
    return _render([_tool("kubectl"), "kustomize", str(KUBERNETES / folder)])


def helm(*values: str) -> list[Manifest]:
    sets = [arg for value in values for arg in ("--set", value)]
    return _render([_tool("helm"), "template", "dnsmesh", str(CHART), "-n", "dnsmesh", *sets])


RENDERINGS = {
    "kustomize base": lambda: kustomize("base"),
    "kustomize node-local": lambda: kustomize("overlays/node-local"),
    "helm defaults": lambda: helm(),
    "helm link-local": lambda: helm("agent.linkLocal.enabled=true"),
}


@pytest.fixture(scope="module", params=list(RENDERINGS))
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    return RENDERINGS[request.param]()


def one(manifests: list[Manifest], kind: str, component: str | None = None) -> Manifest:
    def matches(m: Manifest) -> bool:
        labels = m["metadata"].get("labels", {})
        return component is None or labels.get("app.kubernetes.io/component") == component

    found = [m for m in manifests if m["kind"] == kind and matches(m)]
    assert len(found) == 1, f"{len(found)} {kind} {component or ''}"
    return found[0]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def test_every_manifest_validates_against_the_kubernetes_schemas(
    manifests: list[Manifest],
) -> None:
    for manifest in manifests:
        kubernetes_validate.validate(manifest, SCHEMA_VERSION, strict=True)


def test_every_dnsmesh_command_is_accepted_by_the_real_parser(manifests: list[Manifest]) -> None:
    commands = 0
    for manifest in manifests:
        if manifest["kind"] not in ("Deployment", "DaemonSet", "Job"):
            continue
        for container in pod_spec(manifest)["containers"]:
            entry = container.get("command", ["dnsmesh"])
            assert entry[0] in DNSMESH_ENTRY_POINTS, container["name"]
            parse(container["args"])
            commands += 1
    assert commands == 4  # controller, agent, migrate, apply


def test_the_controller_runs_two_tls_replicas_behind_a_service(manifests: list[Manifest]) -> None:
    deployment = one(manifests, "Deployment", "controller")
    assert deployment["spec"]["replicas"] == 2
    (container,) = pod_spec(deployment)["containers"]
    args = parse(container["args"])
    assert args.tls and args.ca_cert and args.ca_key
    service = one(manifests, "Service", "controller")
    assert f"{service['metadata']['name']}.dnsmesh.svc" in args.tls_san
    url = [e for e in container["env"] if e["name"] == "DNSMESH_DATABASE_URL"]
    assert url[0]["valueFrom"]["secretKeyRef"]["key"] == "url"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_the_agent_is_a_node_critical_daemonset_that_never_leaves_a_node_without_one(
    manifests: list[Manifest],
) -> None:
    daemonset = one(manifests, "DaemonSet", "agent")
    spec = pod_spec(daemonset)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    update = daemonset["spec"]["updateStrategy"]
    assert update["type"] == "RollingUpdate"
    assert update["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    (agent,) = spec["containers"]
    # With hostNetwork a declared port is a hostPort, and the surge pod could not schedule.
    assert "ports" not in agent
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = agent[probe]["httpGet"]
        assert (get["host"], get["port"], get["path"]) == (*AGENT_ADMIN, path)
    args = parse(agent["args"])
    assert str(args.ca_file).startswith("/etc/dnsmesh/ca-bundle/")
    assert [url[:8] for url in args.controller] == ["https://"]
    assert agent["command"] == ["dnsmesh-netcaps"]
    assert agent["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_BIND_SERVICE", "NET_RAW"],
    }


def test_link_local_renderings_listen_on_169_254_20_10_with_the_cluster_dns_upstream(
    manifests: list[Manifest],
) -> None:
    spec = pod_spec(one(manifests, "DaemonSet", "agent"))
    args = parse(spec["containers"][0]["args"])
    init = {c["name"]: c for c in spec["initContainers"]}
    if args.listen == ["127.0.0.1:53"]:
        assert "link-local-address" not in init
        return
    assert args.listen == ["169.254.20.10:53"]
    assert args.upstream == ["10.96.0.10"]
    assert init["link-local-address"]["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]


def test_no_rbac_and_no_api_token_anywhere(manifests: list[Manifest]) -> None:
    kinds = {m["kind"] for m in manifests}
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    for manifest in manifests:
        if manifest["kind"] == "ServiceAccount":
            assert manifest["automountServiceAccountToken"] is False
        if manifest["kind"] in ("Deployment", "DaemonSet", "Job"):
            assert pod_spec(manifest)["automountServiceAccountToken"] is False


def test_the_policies_configmap_holds_the_example_policies(
    manifests: list[Manifest], tmp_path: Path
) -> None:
    configmap = one(manifests, "ConfigMap")
    expected = {p.name: p.read_text() for p in sorted((ROOT / "policies").glob("*.yaml"))}
    assert configmap["data"] == expected
    # Mounted the way the kubelet lays a ConfigMap out: files are links into a hidden
    # folder beside it. `dnsmesh apply -f` reads each policy once.
    hidden = tmp_path / "..2026_01_01_00_00_00.000000001"
    hidden.mkdir()
    (tmp_path / "..data").symlink_to(hidden.name)
    for name, text in configmap["data"].items():
        (hidden / name).write_text(text)
        (tmp_path / name).symlink_to(f"..data/{name}")
    loaded = load_policy_path(tmp_path)
    assert sorted(p.policy.metadata.name for p in loaded) == [
        "cart",
        "checkout",
        "orders-db",
        "tenant-api",
    ]


def test_the_copies_of_the_policies_are_the_repositorys() -> None:
    for copy in (KUBERNETES / "base/policies", CHART / "files/policies"):
        names = sorted(p.name for p in copy.iterdir())
        assert names == sorted(p.name for p in (ROOT / "policies").glob("*.yaml")), copy
        for name in names:
            assert (copy / name).read_text() == (ROOT / "policies" / name).read_text(), name


def test_helm_lint_passes() -> None:
    result = subprocess.run(
        [_tool("helm"), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
