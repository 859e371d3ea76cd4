#!/usr/bin/env bash
# Installs what CNNF needs on a fresh Debian machine: Debian packages (only the
# missing ones, after one `apt-get update`) and a virtual environment in .venv
# holding the project and its test dependencies. Safe to run again: it does
# nothing when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

# Kernel tools, the lab's container engine, NFQUEUE headers, PostgreSQL, Chromium,
# systemd (its systemd-analyze verifies the shipped unit in tests/deploy/).
APT_PACKAGES=(
  iptables nftables conntrack ipset iproute2 procps psmisc
  podman runc busybox-static dnsmasq-base hping3
  containerd containernetworking-plugins mmdebstrap
  libnetfilter-queue-dev libnfnetlink-dev build-essential python3-dev
  postgresql chromium systemd
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Node.js and npm come with the machine image (the Radar build needs them).
command -v npm >/dev/null || { echo "bootstrap: npm is missing: install Node.js 20 and npm" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
stamp=.venv/.cnnf-installed
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing the project and its test dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi

# The web UI (Radar), built into src/cnnf/console/static when its sources are newer.
scripts/build-web.sh
