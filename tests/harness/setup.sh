#!/usr/bin/env bash
# Installs the pinned test harness (a real PLC and PDS from the npm registry)
# into tests/harness/node_modules. A no-op when the lockfile is already installed.
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.lexview-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "tests/harness: npm ci (first run: about 75 s)" >&2
npm ci --no-audit --no-fund --loglevel=error >&2
node -e 'require("better-sqlite3")' >&2
echo "$want" >"$stamp"
