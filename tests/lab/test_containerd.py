"""containerd host files: its config, the CNI network, the OCI archive (no root needed)."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from cnnf.lab.containerd import cni_conflist, config_toml
from cnnf.lab.image import PAUSE_IMAGE, oci_archive
from cnnf.lab.lab import host_paths
from cnnf.lab.plan import make_plan
from cnnf.lab.system import is_static_busybox
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


def test_oci_archive_gives_each_name_its_own_id_over_one_layer(tmp_path: Path) -> None:
    if not is_static_busybox():
        pytest.skip("needs busybox-static")
    path, ids = oci_archive(["k/web:1", "k/db:2"], cache_dir=tmp_path)
    assert set(ids) == {PAUSE_IMAGE, "docker.io/k/web:1", "docker.io/k/db:2"}
    assert len(set(ids.values())) == 3  # no two names share an image ID
    with tarfile.open(path) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        names = {m["annotations"]["io.containerd.image.name"] for m in index["manifests"]}
        assert names == set(ids)
        layers = set()
        for m in index["manifests"]:
            digest = m["digest"].removeprefix("sha256:")
            manifest = json.loads(tar.extractfile(f"blobs/sha256/{digest}").read())  # type: ignore[union-attr]
            layers |= {layer["digest"] for layer in manifest["layers"]}
            config = manifest["config"]["digest"]
            assert config in ids.values()
        assert len(layers) == 1
    # Cached: the same names give the same file and IDs.
    assert oci_archive(["k/db:2", "k/web:1"], cache_dir=tmp_path) == (path, ids)
