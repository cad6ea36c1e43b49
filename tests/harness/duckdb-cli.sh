#!/usr/bin/env bash
# Installs the stock DuckDB command-line shell (the `duckdb-cli` wheel from PyPI,
# same DuckDB version as the bundled library) into tests/harness/duckdb-cli/ and
# prints the binary's path. A no-op when already installed.
set -euo pipefail
cd "$(dirname "$0")"
version=1.5.6
bin=duckdb-cli/duckdb_cli/duckdb
if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "v$version"; then
  echo "tests/harness: installing duckdb-cli $version from PyPI" >&2
  python3 -m pip install --quiet --no-deps --upgrade --target duckdb-cli "duckdb-cli==$version" >&2
  chmod +x "$bin"
fi
echo "$PWD/$bin"
