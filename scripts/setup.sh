#!/usr/bin/env bash
# Installs what a fresh machine lacks for imgflow: Debian packages, uv, the Python environment and
# the MongoDB-wire server. Quick when everything is there already.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v openssl >/dev/null || need_apt+=(openssl)
# applies scripts/patches to the FerretDB source before it is built
command -v patch >/dev/null || need_apt+=(patch)
# PostgreSQL under FerretDB: the embedded MongoDB-wire server (harness/src/imgflow/harness/ferretdb_pg.py)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
# headless Chromium: tests/test_signed_urls.py shows a thumbnail through <img src=signedUrl> in it
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
  echo "setup: Go 1.24 or newer is needed to build FerretDB, etcd, kube-apiserver and helm" >&2
  exit 1
fi

if ! command -v uv >/dev/null; then
  echo "setup: installing uv" >&2
  python3 -m pip install --quiet --disable-pip-version-check uv
fi

uv sync --frozen --quiet

# A MongoDB-wire server: mongod or a given URL is used as it is; otherwise FerretDB is built once.
if [ -z "${MONGODB_URL:-}" ] && ! command -v mongod >/dev/null; then
  scripts/tools.sh ferretdb
fi
