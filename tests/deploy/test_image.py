"""The image's build files: deploy/Containerfile builds on the base that
deploy/build-image.sh makes from Debian packages (no registry image), with the
kernel tools the Defender drives, and the wheel holds every data file the
package reads. (The image itself is built and run by
tests/defender/lab/test_defender_pod.py.)"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = (ROOT / "deploy" / "Containerfile").read_text()
SCRIPT = ROOT / "deploy" / "build-image.sh"


def _shell_array(name: str) -> list[str]:
    match = re.search(rf"^{name}=\(([^)]*)\)", SCRIPT.read_text(), re.M)
    assert match, name
    return match.group(1).split()


def test_containerfile_builds_from_the_local_base_only() -> None:
    froms = re.findall(r"^FROM\s+(\S+)", CONTAINERFILE, re.M)
    assert froms == ["${BASE}"]
    (default,) = re.findall(r"^ARG BASE=(\S+)$", CONTAINERFILE, re.M)
    assert default.startswith("localhost/cnnf-base:")
    # The script imports the base under that name (its release is the host's).
    assert "BASE=localhost/cnnf-base:$CODENAME" in SCRIPT.read_text()
    assert re.search(r'^ENTRYPOINT \["cnnf"\]$', CONTAINERFILE, re.M)
    # The one command is documented at the top.
    assert "deploy/build-image.sh" in CONTAINERFILE.split("FROM")[0]


def test_the_wheels_are_installed_offline_from_the_build_context() -> None:
    # No COPY of the checkout: the context is the script's work directory, which
    # holds only the wheels, bound in for the install (not kept in a layer).
    assert not re.search(r"^COPY ", CONTAINERFILE, re.M)
    assert "--mount=type=bind,source=wheels,target=/wheels" in CONTAINERFILE
    assert "--no-index" in CONTAINERFILE
    script = SCRIPT.read_text()
    assert '--wheel-dir "$WORK/wheels"' in script
    assert re.search(r'podman build .*--network none', script)
    # A bind mount is not part of the layer cache's key: a cached install
    # layer would keep the wheels of an earlier build.
    assert re.search(r'podman build .*--no-cache', script)
    assert '-f deploy/Containerfile -t "$TAG" "$WORK"' in script


def test_the_base_has_the_kernel_tools_and_python() -> None:
    packages = _shell_array("BASE_PACKAGES")
    for package in ("python3", "iptables", "nftables", "ipset", "conntrack", "iproute2",
                    "libnetfilter-queue1", "libstdc++6"):
        assert package in packages, package
    # ... and the build checks that both iptables backends and the rest are there.
    for tool in ("iptables-nft", "iptables-legacy", "nft", "ipset", "conntrack"):
        assert tool in CONTAINERFILE, tool


def test_the_script_parses_and_prints_its_usage() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True,
                          check=False, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "--oci-archive PATH" in proc.stdout and "ctr -n k8s.io images import" in proc.stdout
    proc = subprocess.run([str(SCRIPT), "--no-such-option"], capture_output=True, text=True,
                          check=False, timeout=30)
    assert proc.returncode == 2 and "unknown argument" in proc.stderr


# Files under src/cnnf the installed package does not read.
NOT_PACKAGE_DATA = {
    "console/store/migrations/script.py.mako",  # Alembic's template for writing new migrations
}


def test_package_data_holds_every_data_file() -> None:
    """A file the package reads (the CRI's .proto, topologies, schemas) that no
    package-data pattern names is missing from the wheel, and so from the image."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["cnnf"]
    src = ROOT / "src" / "cnnf"
    tracked = subprocess.run(["git", "ls-files", "src/cnnf"], cwd=ROOT, capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
    data = [str(Path(p).relative_to("src/cnnf")) for p in tracked
            if not p.endswith(".py") and not p.startswith("src/cnnf/web/")]
    assert "cri/cri.proto" in data
    missing = [p for p in data if p not in NOT_PACKAGE_DATA
               and not any(fnmatch.fnmatch(p, pat) for pat in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
    assert (src / "cri" / "cri.proto").is_file()
