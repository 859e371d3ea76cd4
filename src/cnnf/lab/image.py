"""The lab's container image: a root filesystem made of busybox-static.

No image registry is reachable, so every image the topology names is the same
small busybox root filesystem imported (``podman import``) under that name.
The tarball is built once and cached, keyed by the busybox binary's hash.
"""

from __future__ import annotations

import hashlib
import io
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
