#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what it needs, then pytest.
# Usage: bash scripts/test.sh [pytest args...]     (e.g. -m slow for the heavy trials)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
if [ -z "${PORTAL_BOOT_TEST_DATABASE_URL:-}" ] && ! command -v pg_config >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
command -v gpg >/dev/null || need_apt+=(gnupg)
# The pooler tests (tests/test_pooler.py) start the pgbouncer binary themselves.
new_pgbouncer=
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
  need_apt+=(pgbouncer)
  new_pgbouncer=1
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ -n "$new_pgbouncer" ] && command -v systemctl >/dev/null; then
  # Debian's package may start its own service (port 6432): the tests do not use it.
  systemctl disable --now pgbouncer >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
exec .venv/bin/python -m pytest "$@"
