"""The lab's container image: a root filesystem made of busybox-static.

No image registry is reachable, so every image the topology names is the same
small busybox root filesystem imported (``podman import``) under that name.
The tarball is built once and cached, keyed by the busybox binary's hash.
containerd hosts import the same filesystem from an OCI archive written here
(:func:`oci_archive`), with a pause image made of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from cnnf.lab.system import BUSYBOX, LabError

CACHE_DIR = Path("/var/cache/cnnf-lab")
INDEX_HTML = b"<html><body>cnnf lab</body></html>\n"


def qualified(image: str) -> str:
    """The fully qualified reference Podman stores an image name under."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}"


def rootfs_tarball(cache_dir: Path = CACHE_DIR) -> Path:
    """Path of the cached busybox root filesystem tarball (built when missing)."""
    data = Path(BUSYBOX).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = cache_dir / f"busybox-rootfs-{digest}.tar"
    if path.exists():
        return path
    applets = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=False
    ).stdout.split()
    if not applets:
        raise LabError(f"{BUSYBOX} --list printed no applets")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w") as tar:
            for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "www", "root", "var"):
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o1777 if d == "tmp" else 0o755
                tar.addfile(info)
            info = tarfile.TarInfo("bin/busybox")
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
            for applet in applets:
                if applet == "busybox":
                    continue
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type = tarfile.SYMTYPE
                link.linkname = "busybox"
                tar.addfile(link)
            files = {
                "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n"
                b"nobody:x:65534:65534::/:/bin/false\n",
                "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
                "www/index.html": INDEX_HTML,
            }
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# The pause image of containerd nodes: the same root filesystem, sleeping. It is
# named under localhost/ so that nobody takes it for the upstream pause image.
PAUSE_IMAGE = "localhost/cnnf-lab/pause:1"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


OCI_ARCHIVES_KEPT = 16  # one per set of image names: tests that start pods add sets


def _prune(cache_dir: Path, pattern: str, keep: int) -> None:
    """Remove all but the ``keep`` most recently used files matching ``pattern``."""
    files = sorted(cache_dir.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()


def _blob(data: bytes, media_type: str) -> tuple[dict[str, object], bytes]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return {"mediaType": media_type, "digest": digest, "size": len(data)}, data


def oci_archive(images: list[str], cache_dir: Path = CACHE_DIR) -> tuple[Path, dict[str, str]]:
    """An OCI image layout archive (for ``ctr images import``) holding every image
    of ``images`` and :data:`PAUSE_IMAGE`, all made of the busybox root filesystem
    (one layer blob shared by all), and each image's ID (its config's digest, as
    the CRI names images) by qualified name. Each image's config names the image,
    so that no two names share an ID (a runtime would report every name of an ID
    as its tags). Written without an engine, and cached: the same set of names
    gives the same file."""
    layer_path = rootfs_tarball(cache_dir)
    names = sorted({qualified(i) for i in images} - {PAUSE_IMAGE})
    layer = layer_path.read_bytes()
    layer_desc, _ = _blob(layer, _OCI_LAYER)
    blobs: dict[str, bytes] = {}
    manifests: list[dict[str, object]] = []
    ids: dict[str, str] = {}
    for name in [PAUSE_IMAGE, *names]:
        cmd = ["/bin/sleep", "2147483647"] if name == PAUSE_IMAGE else ["/bin/sh"]
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "Labels": {"cnnf.lab.image": name}},
            "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        }
        config_desc, config_data = _blob(json.dumps(config, sort_keys=True).encode(), _OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": _OCI_MANIFEST,
            "config": config_desc,
            "layers": [layer_desc],
        }
        desc, data = _blob(json.dumps(manifest, sort_keys=True).encode(), _OCI_MANIFEST)
        blobs[str(config_desc["digest"])] = config_data
        blobs[str(desc["digest"])] = data
        ids[name] = str(config_desc["digest"])
        manifests.append({**desc, "annotations": {"io.containerd.image.name": name,
                                                  "org.opencontainers.image.ref.name": name}})
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": manifests}  # fmt: skip
    key = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()
    path = cache_dir / f"oci-{key[:16]}.tar"
    if path.exists():
        os.utime(path)
        return path, ids
    _prune(cache_dir, "oci-*.tar", keep=OCI_ARCHIVES_KEPT - 1)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w") as tar:

            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))

            add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
            add("index.json", json.dumps(index, sort_keys=True).encode())
            add(f"blobs/sha256/{str(layer_desc['digest']).removeprefix('sha256:')}", layer)
            for digest, data in blobs.items():
                add(f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path, ids
