#!/usr/bin/env bash
# Boot the example portal with its three example plugins, on SQLite, on 127.0.0.1:8000.
# Builds and signs the example plugin wheels with a throwaway demo key first.
# Usage: bash scripts/demo.sh [extra portal-boot run options]   (then: curl localhost:8000/health/plugins)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

command -v gpg >/dev/null || { apt-get update -qq && apt-get install -y -qq gnupg >/dev/null; }
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
PATH="$repo/.venv/bin:$PATH" bash scripts/build-example-plugins.sh examples/wheels examples/keys

state="$repo/.portal-boot"
mkdir -p "$state"
cd examples/portal
export PORTAL_BOOT_DATABASE_URL="sqlite+aiosqlite:///$state/portal.db"
export PORTAL_BOOT_WHEEL_DIR="$repo/examples/wheels"
export PORTAL_BOOT_TRUSTED_KEYS="$repo/examples/keys/demo-signing-key.asc"
export PORTAL_BOOT_TARGET="$state/plugins"
export PORTAL_BOOT_ALEMBIC_CONFIG="$repo/examples/portal/alembic.ini"
export PORTAL_BOOT_HOST="${PORTAL_BOOT_HOST:-127.0.0.1}"
export PORTAL_BOOT_PORT="${PORTAL_BOOT_PORT:-8000}"
exec "$repo/.venv/bin/portal-boot" run "$@"
