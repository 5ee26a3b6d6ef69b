#!/usr/bin/env bash
# The image's Python environment without a Docker engine: the Dockerfile's build stage
# (`uv sync --frozen --no-dev --no-editable`, no extra: no embedded engine) into a
# throw-away venv, then what the image runs first. Proves the production dependency set
# installs from the lock, leaves chdb out, imports, and starts `cdr --help` and each
# command's `--check-config`. What it cannot prove: the base image itself (pinned by tag
# in the Dockerfile) and the non-root user; hadolint checks the Dockerfile (tests/deploy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
uv="${UV:-.tools/bin/uv}"
uv_version="$(sed -n 's/^RUN pip install --no-cache-dir uv==\([0-9.]*\)$/\1/p' Dockerfile)"
[ "$("$uv" --version | cut -d' ' -f2)" = "$uv_version" ] || { echo "uv $uv_version expected (the Dockerfile's)" >&2; exit 1; }
env_dir="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$env_dir")"' EXIT
# The Dockerfile's two steps: the dependencies, then the project itself (not editable).
UV_PROJECT_ENVIRONMENT="$env_dir" "$uv" sync --quiet --frozen --no-dev --no-install-project
UV_PROJECT_ENVIRONMENT="$env_dir" "$uv" sync --quiet --frozen --no-dev --no-editable
cdr="$env_dir/bin/cdr"
# Run from elsewhere, as the image does: nothing may come from the checkout.
cd "$(dirname "$env_dir")"
if "$env_dir/bin/python" -c 'import chdb' 2>/dev/null; then
  echo "the image's environment has chdb (the embedded engine belongs to the 'embedded' extra)" >&2; exit 1
fi
"$cdr" --help >/dev/null
secret="ci-image-check-cursor-secret-0123456789"
for command in migrate ingest api notify; do
  CDR_CLICKHOUSE_URL=http://clickhouse:8123 CDR_CURSOR_SECRET="$secret" "$cdr" "$command" --check-config 2>/dev/null \
    || { echo "cdr $command --check-config failed in the image's environment" >&2; exit 1; }
done
# No server set: a clear refusal (exit 2) naming the setting, not an ImportError.
set +e
out="$(CDR_CURSOR_SECRET="$secret" "$cdr" api --check-config 2>&1)"; rc=$?
set -e
[ "$rc" = 2 ] && grep -q "the embedded engine is not installed: set CDR_CLICKHOUSE_URL" <<<"$out" \
  || { echo "expected exit 2 naming CDR_CLICKHOUSE_URL without a server, got $rc: $out" >&2; exit 1; }
echo "image environment: ok (no chdb; cdr --help and --check-config run)"
