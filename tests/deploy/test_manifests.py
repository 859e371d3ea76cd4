"""The deployment files: Kubernetes manifests validated against the API schema
(offline: kubernetes-validate ships the schemas), the command lines they run
parsed by the real ``cnnf`` CLI, and the systemd unit checked by systemd."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from cnnf.cli import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes we support and the newest the schemas know.
VERSIONS = ("1.28.0", kubernetes_validate.latest_version())


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


OBJECTS = [(path, doc) for path in MANIFESTS if path.name != "kustomization.yaml"
           for doc in _documents(path)]
API_OBJECTS = [pytest.param(doc, id=f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
               for path, doc in OBJECTS]


def _all(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [doc for _, doc in OBJECTS if doc["kind"] == kind
            and (name is None or doc["metadata"]["name"] == name)]


def _pod_spec(kind: str, name: str) -> dict[str, Any]:
    (obj,) = _all(kind, name)
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def test_every_manifest_file_has_objects() -> None:
    assert {p.name for p in MANIFESTS} >= {
        "namespace.yaml", "rbac.yaml", "console.yaml", "console-postgres.yaml",
        "defender.yaml", "kustomization.yaml"}
    assert len(API_OBJECTS) >= 8


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc", API_OBJECTS)
def test_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any],
                                                         version: str) -> None:
    # strict: a misspelt or misplaced field is an error, not silently ignored.
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_a_broken_manifest() -> None:
    """The check above can fail: a misplaced field and a bad type are refused."""
    ds = _all("DaemonSet", "cnnf-defender")[0]
    broken = yaml.safe_load(yaml.safe_dump(ds))
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(ds))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUser"] = "root"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_kustomization_lists_existing_files_and_one_console() -> None:
    (kustomization,) = _documents(DEPLOY / "kubernetes" / "kustomization.yaml")
    for name in kustomization["resources"]:
        assert (DEPLOY / "kubernetes" / name).is_file(), name
    assert "console.yaml" in kustomization["resources"]
    assert "console-postgres.yaml" not in kustomization["resources"]


def test_namespaced_objects_live_in_the_cnnf_namespace() -> None:
    namespaces = {o["metadata"]["name"] for o in _all("Namespace")}
    assert namespaces == {"cnnf"}
    for _, obj in OBJECTS:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "cnnf"


def test_defender_daemonset_has_what_the_datapath_needs() -> None:
    spec = _pod_spec("DaemonSet", "cnnf-defender")
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in spec["tolerations"]
    (container,) = spec["containers"]
    caps = container["securityContext"]["capabilities"]
    assert set(caps["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert caps["drop"] == ["ALL"]
    assert container["securityContext"]["privileged"] is False
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    # The CRI socket's directory (a socket made anew by a restarted runtime is
    # seen), read-only, and the socket named in it; no Docker socket.
    runtime = volumes["runtime-socket"]["hostPath"]
    assert runtime == {"path": "/run/containerd", "type": "Directory"}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "runtime-socket"]
    assert mount["readOnly"] is True
    args = container["args"]
    assert args[args.index("--runtime") + 1] == "cri"
    assert args[args.index("--cri-socket") + 1] == f"unix://{mount['mountPath']}/containerd.sock"
    assert "--docker-host" not in args
    assert not any("docker.sock" in v.get("hostPath", {}).get("path", "") for v in spec["volumes"])
    assert volumes["xtables-lock"]["hostPath"]["path"] == mounts["xtables-lock"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CNNF_ENROLLMENT_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "cnnf-enrollment"


def test_pods_run_the_image_the_build_makes() -> None:
    """deploy/build-image.sh makes localhost/cnnf:<version> (its OCI archive keeps
    that name through `ctr images import`): the manifests run it as is, and set
    to a registry's name, the same image pushed there."""
    with (DEPLOY.parent / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    images = {c["image"] for kind in ("Deployment", "DaemonSet") for obj in _all(kind)
              for c in obj["spec"]["template"]["spec"]["containers"]}
    assert images == {f"localhost/cnnf:{version}"}


def test_service_accounts_get_no_api_access() -> None:
    assert not _all("Role") and not _all("ClusterRole")
    assert not _all("RoleBinding") and not _all("ClusterRoleBinding")
    for sa in _all("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    for kind, name in (("Deployment", "cnnf-console"), ("DaemonSet", "cnnf-defender")):
        for obj in _all(kind, name):
            pod = obj["spec"]["template"]["spec"]
            assert pod["serviceAccountName"] in {s["metadata"]["name"]
                                                 for s in _all("ServiceAccount")}


def test_console_services_select_console_pods() -> None:
    for svc in _all("Service", "cnnf-console"):
        port = svc["spec"]["ports"][0]
        for dep in _all("Deployment", "cnnf-console"):
            labels = dep["spec"]["template"]["metadata"]["labels"]
            assert svc["spec"]["selector"].items() <= labels.items()
            (container,) = dep["spec"]["template"]["spec"]["containers"]
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert port["targetPort"] in named
            listen = container["args"][container["args"].index("--listen") + 1]
            assert listen == f"0.0.0.0:{named[port['targetPort']]}"


def test_console_storage_sqlite_on_a_claim_or_postgres_from_a_secret() -> None:
    (sqlite,) = [d for d in _documents(DEPLOY / "kubernetes" / "console.yaml")
                 if d["kind"] == "Deployment"]
    (postgres,) = [d for d in _documents(DEPLOY / "kubernetes" / "console-postgres.yaml")
                   if d["kind"] == "Deployment"]
    claim = _all("PersistentVolumeClaim", "cnnf-console-data")[0]
    volumes = {v["name"]: v for v in sqlite["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert sqlite["spec"]["strategy"]["type"] == "Recreate"
    for dep in (sqlite, postgres):
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        data_dir = {e["name"]: e.get("value") for e in container["env"]}["CNNF_DATA_DIR"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert data_dir == mounts["data"]
    (container,) = postgres["spec"]["template"]["spec"]["containers"]
    assert "--db" in container["args"] and "$(CNNF_DB_URL)" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CNNF_DB_URL"]["valueFrom"]["secretKeyRef"] == {"name": "cnnf-console-db",
                                                                "key": "url"}


def _cli_accepts(args: list[str]) -> None:
    """The arguments parse with the real CLI (options exist; ``--help`` stops
    before anything runs)."""
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, (args, result.output)


CONTAINER_ARGS = [
    pytest.param(c["args"], id=f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}")
    for kind in ("Deployment", "DaemonSet") for obj in _all(kind)
    for c in obj["spec"]["template"]["spec"]["containers"]
]


@pytest.mark.parametrize("args", CONTAINER_ARGS)
def test_container_command_lines_parse(args: list[str]) -> None:
    _cli_accepts(args)


def test_cli_check_refuses_an_unknown_option() -> None:
    result = CliRunner().invoke(app, ["defender", "run", "--no-such-option", "x", "--help"])
    assert result.exit_code != 0


UNIT = DEPLOY / "systemd" / "cnnf-defender.service"


def _unit_exec(key: str) -> list[list[str]]:
    lines = [ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines()
             if ln.startswith(f"{key}=")]
    return [ln.lstrip("-").split() for ln in lines]


def test_systemd_unit_command_lines_parse() -> None:
    (start,) = _unit_exec("ExecStart")
    assert start[:3] == ["/usr/local/bin/cnnf", "defender", "run"]
    _cli_accepts([a for a in start[1:] if not a.startswith("$")])
    # No cleanup between a crash and the restart: the start replaces the crashed
    # run's rules in one step, and a cleanup would leave a moment without them.
    assert _unit_exec("ExecStopPost") == [] and _unit_exec("ExecStartPre") == []


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd (scripts/bootstrap.sh)")
    # systemd checks the executable exists: point it at this checkout's cnnf.
    cnnf = Path(sys.executable).parent / "cnnf"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/cnnf", str(cnnf)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "cnnf-defender.service" not in proc.stderr, proc.stderr


def test_console_on_postgres_runs_three_replicas_ready_when_they_can_serve() -> None:
    docs = _documents(DEPLOY / "kubernetes" / "console-postgres.yaml")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert dep["spec"]["replicas"] == 3
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        dep["spec"]["template"]["metadata"]["labels"].items()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    from cnnf.console.app import create_app
    from cnnf.console.config import ConsoleConfig

    paths = create_app(ConsoleConfig(db_url="sqlite://")).openapi()["paths"]
    assert {"/readyz", "/healthz"} <= paths.keys()  # the probes' paths exist
