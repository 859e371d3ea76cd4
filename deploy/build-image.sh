#!/usr/bin/env bash
# Builds the CNNF image, localhost/cnnf:<version>, without any container registry:
#
#   1. the base image, localhost/cnnf-base:<codename>: a Debian root filesystem
#      made by mmdebstrap from Debian packages (Python 3 and the kernel tools the
#      Defender drives), fetched through this host's apt sources and proxy
#      settings, imported into Podman. Built once: kept while its package list is
#      unchanged (--rebuild-base builds it again, say for security updates);
#   2. the wheels of CNNF and of its dependencies, built on this host with pip
#      (the web UI is built first with npm when its sources are newer);
#   3. deploy/Containerfile on that base: the wheels are installed offline into a
#      virtual environment, with no network inside the build.
#
# Usage: deploy/build-image.sh [--tag NAME] [--oci-archive PATH] [--rebuild-base]
#   --tag NAME          image name (default localhost/cnnf:<version in pyproject.toml>)
#   --oci-archive PATH  also write the image as an OCI archive for a containerd node:
#                       ctr -n k8s.io images import PATH
#   --rebuild-base      build the base image again even if it is present
# Needs root (or rootless Podman and mmdebstrap's unshare mode), podman, mmdebstrap,
# python3 with pip (the base's Python version: 3.11 on bookworm) and npm.
# Environment: PYTHON (default python3), CNNF_BUILD_DIR (default build/image).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
WORK=${CNNF_BUILD_DIR:-build/image}
TAG="" OCI_ARCHIVE="" REBUILD_BASE=0
while (($#)); do
  case "$1" in
    --tag) TAG=$2; shift 2 ;;
    --oci-archive) OCI_ARCHIVE=$2; shift 2 ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
TAG=${TAG:-localhost/cnnf:$VERSION}
# The base: the host's Debian release (the mirrors come from its apt sources).
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
BASE=localhost/cnnf-base:$CODENAME
# What runs in the image: Python, iptables (nft and legacy backends; the
# Defender probes which one the node uses) with the NFQUEUE target, nftables
# (fail-closed's TCP resets), ipset, conntrack, iproute2, and libnetfilter_queue
# (loaded through ctypes), procps (sysctl: br_netfilter's settings) and kmod
# (modprobe); libstdc++6 for the wheels' C++ extensions (grpcio). No recommends.
BASE_PACKAGES=(python3 libstdc++6 iptables nftables ipset conntrack iproute2 libnetfilter-queue1
               procps kmod)
# Left out of the base: documentation (but the copyright files), manual pages, translations.
DPKG_EXCLUDES=(
  path-exclude=/usr/share/doc/* path-include=/usr/share/doc/*/copyright
  path-exclude=/usr/share/man/* path-exclude=/usr/share/info/*
  path-exclude=/usr/share/locale/* path-exclude=/usr/share/lintian/*
)

# Resource limits for the build's containers: Podman's defaults raise them above
# what some hosts allow (runc: "error setting rlimits"); these fit everywhere.
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

# The build shares the machine: it runs at a lower priority.
renice -n 10 -p $$ >/dev/null
start=$SECONDS
log() { printf 'build-image: [%d s] %s\n' "$((SECONDS - start))" "$*" >&2; }
mkdir -p "$WORK"

# 1. The base image. --------------------------------------------------------
# The host's Debian sources for its release (the release, -updates and
# -security suites; other repositories the host may use are left out), as apt
# resolves them: one "deb URI SUITE COMPONENTS" line per repository and suite.
debian_sources() {
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' \
    | awk -v c="$CODENAME" '$2 == c || $2 == c "-updates" || $2 == c "-security" {
        key = $1 " " $2
        if (!(key in comps)) order[n++] = key
        if (index(" " comps[key] " ", " " $3 " ") == 0) comps[key] = comps[key] " " $3
      }
      END { for (i = 0; i < n; i++) print "deb " order[i] comps[order[i]] }'
}

# apt settings of the host that decide how it reaches those mirrors: proxies, and
# whether old Release files are accepted (snapshot mirrors).
apt_options() {
  apt-config dump --format '%f "%v";%n' \
    | grep -E '^Acquire::(http|https|ftp)::Proxy(::[^ ]+)? |^Acquire::Check-(Valid-Until|Date) ' || true
}

build_base() {
  local sources aptopts=() dpkgopts=() opt
  sources=$(debian_sources)
  [ -n "$sources" ] || { log "no Debian $CODENAME sources in this host's apt configuration"; exit 1; }
  while IFS= read -r opt; do [ -n "$opt" ] && aptopts+=(--aptopt="$opt"); done < <(apt_options)
  for opt in "${DPKG_EXCLUDES[@]}"; do dpkgopts+=(--dpkgopt="$opt"); done
  log "building $BASE with mmdebstrap: ${BASE_PACKAGES[*]}"
  rm -f "$WORK/base.tar"
  # essential: Debian's Essential packages and the listed ones with their
  # dependencies; no apt in the image (nothing is installed at run time). The
  # merged-usr hook makes /usr merged from the start, as debootstrap does (else
  # the usrmerge package does it, and brings Perl: 45 MB).
  printf '%s\n' "$sources" | mmdebstrap --variant=essential \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
    "${aptopts[@]}" "${dpkgopts[@]}" \
    "$CODENAME" "$WORK/base.tar" - 2>"$WORK/base.log" \
    || { tail -n 40 "$WORK/base.log" >&2; log "mmdebstrap failed (log: $WORK/base.log)"; exit 1; }
  local old
  old=$(podman image inspect --format '{{.Id}}' "$BASE" 2>/dev/null || true)
  podman import --quiet --change "LABEL cnnf.base=$BASE_ID" \
    --message "cnnf base: Debian $CODENAME, ${BASE_PACKAGES[*]}" "$WORK/base.tar" "$BASE" >/dev/null
  rm -f "$WORK/base.tar"
  # The replaced base, unless images built on it still use it.
  [ -z "$old" ] || podman image rm "$old" >/dev/null 2>&1 || true
}

# The base's identity: its release, package list and how it is built.
BASE_ID=$( { printf '%s\n' "$CODENAME" "${BASE_PACKAGES[@]}" "${DPKG_EXCLUDES[@]}"
             declare -f build_base debian_sources; } | sha256sum | cut -c1-16)
if ((REBUILD_BASE)) || ! podman image exists "$BASE" \
   || [ "$(podman image inspect --format '{{index .Labels "cnnf.base"}}' "$BASE")" != "$BASE_ID" ]; then
  build_base
else
  log "$BASE is present (package list unchanged; --rebuild-base builds it again)"
fi
base_python=$(podman run --rm "${LIMITS[@]}" --network none "$BASE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
host_python=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$base_python" != "$host_python" ]; then
  log "$PYTHON is Python $host_python, the base has $base_python: set PYTHON to a Python $base_python"
  exit 1
fi

# 2. The web UI (when its sources are newer than its build) and the wheels. ----
scripts/build-web.sh >&2
# The wheel is built from a copy of the sources, so that nothing stale in an
# earlier build directory, and no web UI source or node_modules, reaches it.
rm -rf "$WORK/src" "$WORK/wheels"
mkdir -p "$WORK/src" "$WORK/wheels"
tar -c --exclude=src/cnnf/web --exclude=__pycache__ --exclude='*.egg-info' \
  pyproject.toml README.md src | tar -x -C "$WORK/src"
log "building the wheels (Python $host_python)"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --prefer-binary \
  --wheel-dir "$WORK/wheels" "$WORK/src" pip
rm -rf "$WORK/src"

# 3. The image. --------------------------------------------------------------
log "building $TAG from $BASE"
old=$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
# --no-cache: the wheels are bound in, not copied, so a cached install layer
# would not see that they changed.
podman build --quiet --no-cache "${LIMITS[@]}" --network none --pull=never --build-arg BASE="$BASE" \
  -f deploy/Containerfile -t "$TAG" "$WORK" >/dev/null
rm -rf "$WORK/wheels"
# The image this build replaced (now untagged).
if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$TAG")" ]; then
  podman image rm "$old" >/dev/null 2>&1 || true
fi
if [ -n "$OCI_ARCHIVE" ]; then
  rm -f "$OCI_ARCHIVE"
  podman save --quiet --format oci-archive -o "$OCI_ARCHIVE" "$TAG"
  log "wrote $OCI_ARCHIVE (on a containerd node: ctr -n k8s.io images import $OCI_ARCHIVE)"
fi
log "built $TAG: $(podman image inspect --format '{{.Size}}' "$TAG" | numfmt --to=si)B"
