#!/usr/bin/env bash
# Builds the web UI (Radar) into src/cnnf/console/static (not committed) when its
# sources are newer than the build, installing the npm packages from the lock file
# first when needed. Used by scripts/bootstrap.sh and deploy/build-image.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

web=src/cnnf/web
built=src/cnnf/console/static/index.html
if [ ! -f "$built" ] || [ -n "$(find "$web" -path "$web/node_modules" -prune -o -type f -newer "$built" -print -quit)" ]; then
  if [ ! -f "$web/node_modules/.package-lock.json" ] || [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
    echo "build-web: installing the web UI's npm packages"
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  echo "build-web: building the web UI"
  (cd "$web" && npm run --silent build)
fi
