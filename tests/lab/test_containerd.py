"""containerd host files: its config and the CNI network (pure; no root needed)."""

from __future__ import annotations

import tomllib

from cnnf.lab.containerd import cni_conflist, config_toml
from cnnf.lab.image import PAUSE_IMAGE
from cnnf.lab.lab import host_paths
from cnnf.lab.plan import make_plan
from cnnf.lab.topology import parse_topology

TOPOLOGY = parse_topology({"name": "k", "hosts": [{"name": "n1", "runtime": "containerd"}]})


def test_config_keeps_everything_under_the_labs_directories() -> None:
    h = make_plan(TOPOLOGY, "kt", 0).hosts["n1"]
    cfg = tomllib.loads(config_toml(h))
    assert cfg["version"] == 2
    assert cfg["root"] == "/var/lib/cnnf-lab/kt/n1/containerd"
    assert cfg["state"] == "/run/cnnf-lab/kt/n1/containerd"
    assert cfg["grpc"]["address"] == "/run/cnnf-lab/kt/n1/containerd.sock"
    assert cfg["ttrpc"]["address"].startswith("/run/cnnf-lab/kt/n1/")
    assert cfg["debug"]["address"].startswith("/run/cnnf-lab/kt/n1/")
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["sandbox_image"] == PAUSE_IMAGE
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/run/cnnf-lab/kt/n1/cni"}


def test_pod_network_is_the_hosts_routed_subnet() -> None:
    h = make_plan(TOPOLOGY, "kt", 3).hosts["n1"]
    bridge = cni_conflist(h)["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["ipMasq"] is False
    assert bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.67.1.0/24", "gateway": "10.67.1.1"}]]
    assert bridge["ipam"]["dataDir"] == "/run/cnnf-lab/kt/n1/cni-ipam"


def test_paths_for_down_match_the_plan() -> None:
    h = make_plan(TOPOLOGY, "kt", 0).hosts["n1"]
    found = host_paths("kt", "n1")
    assert (found.cri_sock, found.containerd_root, found.run_dir) == (
        h.cri_sock, h.containerd_root, h.run_dir
    )  # fmt: skip
