"""The Defender as its DaemonSet runs it: the image ``deploy/build-image.sh``
builds, imported into a ``kube`` lab node's containerd as the README says
(``ctr -n k8s.io images import``), run as a host-network pod created through
the CRI with exactly what ``deploy/kubernetes/defender.yaml`` gives its
container: arguments, environment, security context (root with only
NET_ADMIN and NET_RAW, read-only root filesystem, no privilege escalation) and
mounts (the CRI socket's directory, the state directory, the xtables lock,
/tmp). The pod spec is read from the manifest and turned into CRI calls as a
kubelet turns it (a field the translation does not know fails the test).

The Console runs in node-2's network namespace on port 8080 and the pod's
/etc/hosts names it ``cnnf-console.cnnf.svc`` (the manifest's URL; a cluster's
DNS names its Service so). The Defender pod runs on node-1 and must enforce
node-1's pods. (Root, the lab, Podman and mmdebstrap: the image is built
here, its Debian base once.)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.defender.lab.test_defender_kube import CART_POD, WEB_POD, kube_policy
from tests.defender.lab.test_defender_lab import CNNF, Defender, poll

from cnnf.cri import CONTAINER_EXITED, CONTAINER_RUNNING, NAMESPACE_CONTAINER, NAMESPACE_NODE, pb
from cnnf.defender.datapath.netns import NetnsRef
from cnnf.lab import Lab
from cnnf.lab.containerd import Node, PodRecord

pytestmark = pytest.mark.lab

LAB = "cnnfpod"
NODE = "node-1"
CONSOLE_NODE = "node-2"
ROOT = Path(__file__).resolve().parents[3]
MANIFEST = ROOT / "deploy" / "kubernetes" / "defender.yaml"
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


def daemonset() -> dict[str, Any]:
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return ds


# ----------------------------------------------------------------- the image


class ImageBuild:
    """``deploy/build-image.sh`` run in the background (a process group of its own,
    so that it can be stopped whole); ``result()`` waits for the archive."""

    def __init__(self, work: Path) -> None:
        (container,) = daemonset()["spec"]["template"]["spec"]["containers"]
        self.archive = work / "cnnf.tar"
        self.proc = subprocess.Popen(
            [str(ROOT / "deploy" / "build-image.sh"), "--tag", container["image"],
             "--oci-archive", str(self.archive)],
            env={**os.environ, "CNNF_BUILD_DIR": str(work / "build")},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.waiter = ThreadPoolExecutor(1)
        self.done: Future[str] = self.waiter.submit(self._wait)

    def _wait(self) -> str:
        _, err = self.proc.communicate(timeout=1800)
        return err

    def result(self) -> Path:
        err = self.done.result()
        assert self.proc.returncode == 0, err[-4000:]
        return self.archive

    def stop(self) -> None:
        """A build still running (the lab failed to come up, say) is stopped, not
        waited for; a failed build is said, even if no test asked for the image."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            err = self.done.result(timeout=60)
        except TimeoutError:
            os.killpg(self.proc.pid, signal.SIGKILL)
            err = self.done.result()
        self.waiter.shutdown()
        if self.proc.returncode not in (0, -signal.SIGTERM):
            print(f"the image build failed ({self.proc.returncode}): {err[-2000:]}")


@pytest.fixture(scope="module")
def image_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageBuild]:
    """The image the manifest names, built from this checkout by the one
    command, as an OCI archive: built in the background while the lab and the
    Console come up (the build is most of this module's setup, about a minute)."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("podman", "mmdebstrap",
                                                               "containerd")):
        pytest.fail("the Defender pod test needs root, podman, mmdebstrap and containerd "
                    "(make deps)")
    build = ImageBuild(tmp_path_factory.mktemp("image"))
    try:
        yield build
    finally:
        build.stop()


# ----------------------------------------------------------------- a kubelet


@dataclass
class Volumes:
    """Where the manifest's hostPath volumes are on a lab node, and the
    directory for its emptyDir volumes."""

    host_paths: dict[str, str]
    empty_dirs: Path


POD_KEYS = {"serviceAccountName", "automountServiceAccountToken", "hostNetwork", "dnsPolicy",
            "tolerations", "terminationGracePeriodSeconds", "containers", "volumes"}
CONTAINER_KEYS = {"name", "image", "args", "env", "resources", "securityContext",
                  "volumeMounts"}
SECURITY_KEYS = {"runAsUser", "privileged", "allowPrivilegeEscalation",
                 "readOnlyRootFilesystem", "capabilities"}


def _env(container: dict[str, Any], node: str, secrets_: dict[tuple[str, str], str]
         ) -> dict[str, str]:
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            assert e["valueFrom"]["fieldRef"] == {"fieldPath": "spec.nodeName"}, e
            env[e["name"]] = node
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets_[(ref["name"], ref["key"])]
    return env


def _mounts(spec: dict[str, Any], container: dict[str, Any], vols: Volumes) -> list[Any]:
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = []
    for m in container["volumeMounts"]:
        assert set(m) <= {"name", "mountPath", "readOnly"}, m
        v = volumes[m["name"]]
        if "emptyDir" in v:
            source = vols.empty_dirs / m["name"]
            source.mkdir(parents=True, exist_ok=True)
            source.chmod(0o777)  # as a kubelet makes an emptyDir
        else:
            kind, path = v["hostPath"]["type"], vols.host_paths[v["hostPath"]["path"]]
            if kind == "DirectoryOrCreate":
                os.makedirs(path, mode=0o755, exist_ok=True)
            elif kind == "FileOrCreate":
                Path(path).touch()
            assert {"Directory": os.path.isdir, "DirectoryOrCreate": os.path.isdir,
                    "FileOrCreate": os.path.isfile}[kind](path), (kind, path)
            source = Path(path)
        mounts.append(pb.Mount(container_path=m["mountPath"], host_path=str(source),
                               readonly=bool(m.get("readOnly", False))))
    return mounts


def _security(container: dict[str, Any]) -> Any:
    sc = container["securityContext"]
    assert set(sc) <= SECURITY_KEYS, set(sc) - SECURITY_KEYS
    ctx = pb.LinuxContainerSecurityContext(
        capabilities=pb.Capability(add_capabilities=sc["capabilities"].get("add", []),
                                   drop_capabilities=sc["capabilities"].get("drop", [])),
        privileged=sc["privileged"],
        readonly_rootfs=sc["readOnlyRootFilesystem"],
        no_new_privs=not sc["allowPrivilegeEscalation"])
    ctx.run_as_user.value = sc["runAsUser"]
    # The pod's network is the node's (hostNetwork); each container has its own PIDs.
    ctx.namespace_options.network = NAMESPACE_NODE
    ctx.namespace_options.pid = NAMESPACE_CONTAINER
    return ctx


@dataclass
class RunningPod:
    node: Node
    pod_id: str
    container_id: str
    log: Path
    grace: int

    def state(self) -> Any:
        return self.node.client.container_status(self.container_id)

    def pid(self) -> int:
        return self.node.container_pid(self.container_id)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def run_daemonset_pod(lab: Lab, node: str, vols: Volumes, etc_hosts: Path,
                      secrets_: dict[tuple[str, str], str]) -> RunningPod:
    """The DaemonSet's pod on ``node``, created through the CRI as a kubelet
    creates it from the manifest."""
    ds = daemonset()
    template = ds["spec"]["template"]
    spec = template["spec"]
    assert set(spec) <= POD_KEYS, set(spec) - POD_KEYS
    assert spec["hostNetwork"] is True
    (container,) = spec["containers"]
    assert set(container) <= CONTAINER_KEYS, set(container) - CONTAINER_KEYS
    # (resources: requests and limits are the scheduler's and the cgroup's
    # business, not this test's; the client's CRI subset does not carry them.)
    h = lab.plan.hosts[node]
    n = Node(lab.name, h)
    name = f"{ds['metadata']['name']}-{secrets.token_hex(3)[:5]}"
    record = PodRecord(name=name, host=node, namespace=ds["metadata"]["namespace"],
                       uid=str(uuid.uuid4()), labels=dict(template["metadata"]["labels"]))
    sandbox = n.sandbox_config(record)  # log directory, cgroup parent (the lab's down finds it)
    sandbox.hostname = ""  # a host-network pod has the node's
    sandbox.linux.security_context.namespace_options.network = NAMESPACE_NODE
    env = _env(container, node, secrets_)
    args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a) for a in container["args"]]
    # A kubelet mounts the pod's /etc/hosts (for a host-network pod: the node's).
    mounts = [*_mounts(spec, container, vols),
              pb.Mount(container_path="/etc/hosts", host_path=str(etc_hosts), readonly=True)]
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=container["name"], attempt=0),
        # (A kubelet names the image by the ID it resolved the name to; the name
        # resolves to the same image here.)
        image=pb.ImageSpec(image=container["image"], user_specified_image=container["image"]),
        args=args,
        envs=[pb.KeyValue(key=k, value=v.encode()) for k, v in env.items()],
        mounts=mounts,
        labels={"io.kubernetes.container.name": container["name"],
                "io.kubernetes.pod.name": name,
                "io.kubernetes.pod.namespace": record.namespace,
                "io.kubernetes.pod.uid": record.uid},
        annotations={"io.kubernetes.container.restartCount": "0"},
        log_path=f"{container['name']}/0.log")
    config.linux.security_context.CopyFrom(_security(container))
    pod_id = n.client.run_pod(sandbox)
    cid = n.client.create_container(pod_id, config, sandbox)
    n.client.start_container(cid)
    return RunningPod(n, pod_id, cid, Path(sandbox.log_directory) / config.log_path,
                      int(spec["terminationGracePeriodSeconds"]))


# ----------------------------------------------------------------- the Console


class Console:
    """``cnnf console`` in a lab node's network namespace, on the node's address.
    The test talks to it from a thread that entered that namespace (its sockets
    are made there)."""

    def __init__(self, lab: Lab, node: str, workdir: Path, port: int) -> None:
        data = workdir / "console"
        password = "pod-test-password"
        subprocess.run([CNNF, "console", "create-user", "admin", "--password-stdin",
                        "--data-dir", str(data)], input=password + "\n", text=True,
                       check=True, capture_output=True)
        self.token = subprocess.run(
            [CNNF, "console", "enrollment-token", "--data-dir", str(data)],
            capture_output=True, text=True, check=True).stdout.strip()
        self.address = lab.host_identity(node)["addresses"][0]
        netns = NetnsRef.of(lab.netns(node))
        self.log = workdir / "console.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                netns.argv(CNNF, "console", "--listen", f"{self.address}:{port}",
                           "--data-dir", str(data), "--log-level", "warning"),
                stdout=log, stderr=log)
        self.thread = ThreadPoolExecutor(max_workers=1, initializer=netns.enter)
        self.http = httpx.Client(base_url=f"http://{self.address}:{port}", timeout=10)
        assert poll(self._up, 30), self.log.read_text()[-2000:]
        login = self.call("post", "/api/v1/auth/login",
                          json={"username": "admin", "password": password})
        assert login.status_code == 200, login.text
        self.http.headers["Authorization"] = f"Bearer {login.json()['token']}"

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.thread.submit(self.http.request, method, path, **kw).result()

    def _up(self) -> bool:
        try:
            return self.call("get", "/api/v1/defenders").status_code == 401
        except httpx.HTTPError:
            return False

    def apply(self, doc: dict[str, Any]) -> int:
        r = self.call("post", "/api/v1/policy/import", json=doc)
        assert r.status_code == 200 and r.json()["applied"], r.text
        return int(r.json()["revision"])

    def stop(self) -> None:
        self.thread.submit(self.http.close).result()
        self.thread.shutdown()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# ----------------------------------------------------------------- the test


def _console_url() -> httpx.URL:
    """The manifest's Console URL (the Service's name and port)."""
    (container,) = daemonset()["spec"]["template"]["spec"]["containers"]
    return httpx.URL(container["args"][container["args"].index("--console") + 1])


@dataclass
class Deployed:
    lab: Lab
    console: Console
    pod: RunningPod
    state_dir: Path
    kernel: Defender  # reads node-1's kernel state as the other lab tests read it

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "status.json").read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return {}


@pytest.fixture(scope="module")
def deployed(image_archive: ImageBuild, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Deployed]:
    work = tmp_path_factory.mktemp("pod")
    lab = Lab.up("kube", name=LAB)
    console: Console | None = None
    pod: RunningPod | None = None
    try:
        url = _console_url()
        console = Console(lab, CONSOLE_NODE, work, int(url.port or 80))
        # As the README says: the archive imported into the node's containerd.
        subprocess.run(["ctr", "--address", lab.cri_socket(NODE).removeprefix("unix://"),
                        "-n", "k8s.io", "images", "import", str(image_archive.result())],
                       check=True, capture_output=True, timeout=300)
        etc_hosts = work / "etc-hosts"
        etc_hosts.write_text(f"{Path('/etc/hosts').read_text()}{console.address}\t{url.host}\n")
        state = work / "node-state"
        vols = Volumes(host_paths={  # the manifest's hostPath volumes on the lab node
            "/run/containerd": os.path.dirname(lab.cri_socket(NODE).removeprefix("unix://")),
            "/var/lib/cnnf/defender": str(state),
            "/run/xtables.lock": "/run/xtables.lock",
        }, empty_dirs=work / "empty-dirs")
        pod = run_daemonset_pod(lab, NODE, vols, etc_hosts,
                                {("cnnf-enrollment", "token"): console.token})
        d = Deployed(lab, console, pod, state,
                     Defender(lab, NODE, work, work / "unused", work / "unused"))
        assert poll(lambda: d.status().get("policy_revision") is not None
                    or pod.state().state == CONTAINER_EXITED, 90), pod.output()
        assert pod.state().state == CONTAINER_RUNNING, pod.output()
        yield d
    finally:
        if pod is not None:
            pod.node.close()
        if console is not None:
            console.stop()
        Lab.down(LAB)


def test_the_pod_has_the_daemonsets_user_capabilities_and_read_only_root(
        deployed: Deployed) -> None:
    pid = deployed.pod.pid()
    with open(f"/proc/{pid}/status") as f:
        proc = dict(line.split(":\t", 1) for line in f.read().splitlines())
    assert proc["Uid"].split()[0] == "0"
    net_caps = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)
    assert int(proc["CapEff"], 16) == net_caps and int(proc["CapBnd"], 16) == net_caps
    assert proc["NoNewPrivs"] == "1"
    with open(f"/proc/{pid}/mountinfo") as f:
        options = {fields[4]: fields[5].split(",") for fields in map(str.split, f)}
    assert "ro" in options["/"] and "ro" in options["/host/run/containerd"]
    assert "rw" in options["/var/lib/cnnf/defender"] and "rw" in options["/tmp"]
    # hostNetwork: the node's network namespace.
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(deployed.lab.netns(NODE)).st_ino
    # It wrote its credential through the state mount (the node's directory).
    assert (deployed.state_dir / "credential").is_file()


def test_it_enrolls_and_names_the_nodes_pods(deployed: Deployed) -> None:
    c = deployed.console

    def pods() -> set[tuple[str, str]]:
        inv = c.call("get", "/api/v1/inventory").json()
        return {(w["namespace"], w["pod"]) for w in inv["containers"]}

    expected = {("storefront", WEB_POD), ("storefront", CART_POD), ("data", "redis-0")}
    assert poll(lambda: expected <= pods(), 30), (pods(), deployed.pod.output())
    # The Defender's own pod is on the host network: it is the host, not a workload.
    assert not [p for ns, p in pods() if ns == "cnnf"]
    assert deployed.status()["engine"]["runtime"] == "cri"


def test_it_enforces_the_nodes_pods(deployed: Deployed) -> None:
    c, lab = deployed.console, deployed.lab
    revision = c.apply(kube_policy(0))
    assert poll(lambda: deployed.status().get("policy_revision") == revision, 30), (
        deployed.status(), deployed.pod.output())
    assert lab.connect("web", "cart", 8080).ok  # allowed, by label
    refused = lab.connect("web", "redis", 6379)  # storefront -> data: prevented, by namespace
    assert refused.outcome == "refused", refused

    def audits() -> list[dict[str, Any]]:
        page = c.call("get", "/api/v1/audits", params={"limit": 50, "blocked": True}).json()
        return [a for a in page["items"] if a["srcPod"] == WEB_POD]

    (a, *_) = poll(audits, 15)
    assert (a["srcNamespace"], a["dstPod"], a["dstNamespace"]) == ("storefront", "redis-0", "data")
    assert a["ruleName"] == "storefront-not-data"


def test_metrics_on_the_nodes_loopback(deployed: Deployed) -> None:
    (container,) = daemonset()["spec"]["template"]["spec"]["containers"]
    listen = container["args"][container["args"].index("--metrics") + 1]
    out = subprocess.run(["nsenter", f"--net={deployed.lab.netns(NODE)}", "/bin/busybox",
                          "wget", "-q", "-O", "-", f"http://{listen}/metrics"],
                         capture_output=True, text=True, check=False, timeout=30)
    assert "cnnf_defender" in out.stdout, out.stderr


def test_termination_removes_its_rules_within_the_grace_period(deployed: Deployed) -> None:
    """What a rolling update or a node drain does: SIGTERM, then SIGKILL after
    terminationGracePeriodSeconds."""
    pod = deployed.pod
    assert deployed.kernel.kernel_state() != ("", "")
    t0 = time.monotonic()
    pod.node.client.stop_container(pod.container_id, grace=pod.grace, timeout=pod.grace + 30)
    elapsed = time.monotonic() - t0
    status = pod.state()
    assert status.state == CONTAINER_EXITED and status.exit_code == 0, (status, pod.output())
    assert elapsed < pod.grace
    assert deployed.kernel.kernel_state() == ("", "")
