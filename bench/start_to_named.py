"""Start-to-named gap: how long after the runtime started a workload the
Defender names (and protects) it, on the CRI path beside the Docker path.

One lab (name ``cnnfstart``) with two hosts: ``docker-node`` runs Podman (the
Defender follows the Docker Engine API's start events) and ``cri-node`` runs
containerd (the Defender follows the CRI: ``GetContainerEvents`` where the
runtime has it, else a poll every 200 ms; containerd 1.6 has no events). A
standalone Defender per host; then ROUNDS times, one container on the Docker
host and one pod on the CRI host, started one after the other and removed.
The gap is the Defender's own figure (``start_to_protected_ms`` in its log):
its clock when the workload entered its inventory minus the start time the
runtime reports (the container's ``StartedAt``; the pod's first container's
``started_at``). The Docker path is the baseline, measured in the same run.

Goal (issue 11): the CRI path names a pod within the poll interval (200 ms)
plus a request; nothing is let through unevaluated in between either way (the
container networks are queued from the start: tests/defender/lab).

    sudo .venv/bin/python bench/start_to_named.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnf.lab import Lab, parse_topology
from cnnf.lab.topology import Container

NAME = "cnnfstart"
CNNF = str(Path(sys.executable).with_name("cnnf"))
TOPOLOGY = {
    "name": "startgap",
    "description": "one Podman host, one containerd host",
    "hosts": [{"name": "docker-node"}, {"name": "cri-node", "runtime": "containerd"}],
    "containers": [
        {"name": "base-d", "host": "docker-node", "image": "bench/base:1", "ports": [80]},
        {"name": "base-c", "host": "cri-node", "image": "bench/base:1", "ports": [80]},
    ],
}
POLICY = {"apiVersion": "cnnf/v1", "kind": "Policy",
          "spec": {"containerEnabled": True, "defaultEffect": "allow"}}


def gaps(log: Path, names: set[str]) -> list[float]:
    out = []
    for line in log.read_text().splitlines():
        if '"container protected"' not in line:
            continue
        rec = json.loads(line)
        if rec.get("container") in names and rec.get("start_to_protected_ms") is not None:
            out.append(float(rec["start_to_protected_ms"]))
    return out


def row(label: str, values: list[float], rounds: int) -> str:
    if not values:
        return f"| {label} | 0 of {rounds} | - | - | - | - |"
    q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    return (f"| {label} | {len(values)} of {rounds} | {min(values):.0f} | "
            f"{statistics.median(values):.0f} | {q[8]:.0f} | {max(values):.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnf-startgap-"))
    policy = work / "policy.json"
    policy.write_text(json.dumps(POLICY))
    lab = Lab.up(parse_topology(TOPOLOGY), name=NAME)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for host in ("docker-node", "cri-node"):
            discovery = (["--runtime", "cri", "--cri-socket", lab.cri_socket(host)]
                         if lab.runtime(host) == "containerd"
                         else ["--runtime", "docker", "--docker-host", lab.docker_host(host)])
            with open(work / f"{host}.log", "wb") as log:
                procs[host] = subprocess.Popen(
                    [CNNF, "defender", "run", "--netns", lab.netns(host), *discovery,
                     "--hostname", host, "--policy", str(policy),
                     "--state-dir", str(work / f"state-{host}")], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while not all((work / f"state-{h}" / "status.json").exists() for h in procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                raise SystemExit(f"the Defenders did not start; logs in {work}")
            time.sleep(0.2)
        started: dict[str, set[str]] = {"docker-node": set(), "cri-node": set()}
        for i in range(args.rounds):
            for host, suffix in (("docker-node", "d"), ("cri-node", "c")):
                name = f"w{i}-{suffix}"
                lab.start_container(Container(name=name, host=host, image="bench/base:1",
                                              namespace="bench", labels={"app": "w"}))
                started[host].add(name)
            time.sleep(0.5)  # let both Defenders name them before the removal
            for suffix in ("d", "c"):
                lab.remove_container(f"w{i}-{suffix}")
        time.sleep(1.0)
        docker = gaps(work / "docker-node.log", started["docker-node"])
        cri = gaps(work / "cri-node.log", started["cri-node"])
        print(f"start-to-named gap, {args.rounds} workloads per path (ms; the runtime's "
              "start time to the Defender's inventory)")
        print()
        print("| path | named | min | median | p90 | max |")
        print("|---|---:|---:|---:|---:|---:|")
        print(row("Docker API events (baseline): a Podman container", docker, args.rounds))
        print(row("CRI, polled every 200 ms: a containerd pod", cri, args.rounds))
        if docker and cri:
            print()
            print(f"CRI median / Docker median: "
                  f"{statistics.median(cri) / max(statistics.median(docker), 0.1):.1f}x")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
            p.wait(30)
        Lab.down(NAME)


if __name__ == "__main__":
    main()
