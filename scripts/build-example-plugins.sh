#!/usr/bin/env bash
# Build the three example plugin wheels and sign them with a throwaway demo key.
#
# Usage: scripts/build-example-plugins.sh [WHEEL_DIR [KEY_DIR]]
#   default: examples/wheels examples/keys
# Writes WHEEL_DIR/portal_{s3,snowflake,databricks}_plugin-1.0.0-py3-none-any.whl, a detached
# WHEEL_DIR/<wheel>.asc for each, and KEY_DIR/demo-signing-key.asc (the public key only).
#
# The demo key is new on every run (ed25519, no passphrase) and its secret half lives
# only in a temporary GNUPGHOME that is removed on exit: it signs these three wheels and
# nothing else, ever. Re-run the script to rebuild; wheels and key are replaced together.
#
# Offline once flit_core is installed: the wheels are built with pip's --no-index and
# --no-build-isolation, in the Python given by $PYTHON (default python3). flit_core is
# installed into that Python if it is missing (the only download).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "${1:-$repo/examples/wheels}" "${2:-$repo/examples/keys}"
wheel_dir=$(cd "${1:-$repo/examples/wheels}" && pwd)
key_dir=$(cd "${2:-$repo/examples/keys}" && pwd)
# s3 and snowflake chain their revisions onto the portal's; databricks brings its own
# Alembic environment (migrations/env.py with its own version table).
plugins=(s3_plugin snowflake_plugin databricks_plugin)

command -v gpg >/dev/null || { echo "build-example-plugins: gpg is required (apt-get install gnupg)" >&2; exit 1; }
if ! "$python" -c "import flit_core" 2>/dev/null; then
  echo "build-example-plugins: installing flit_core (the examples' build backend) into $python" >&2
  "$python" -m pip install --quiet --disable-pip-version-check "flit_core>=3.9,<4"
fi

build=$(mktemp -d)
# Short, under /tmp: gpg-agent's socket lives in GNUPGHOME and socket paths are limited.
export GNUPGHOME
GNUPGHOME=$(mktemp -d /tmp/pbdemo-XXXXXX)
cleanup() {
  gpgconf --homedir "$GNUPGHOME" --kill all >/dev/null 2>&1 || true
  rm -rf "$build" "$GNUPGHOME"
}
trap cleanup EXIT

# A fixed timestamp makes the wheels byte-for-byte reproducible, so rebuilding the
# same sources gives the same sha256s (and a portal-boot install that is a no-op).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600}
for plugin in "${plugins[@]}"; do
  # --isolated: the host's pip.conf and PIP_* settings play no part in a local build.
  "$python" -m pip wheel --isolated --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation --no-index --wheel-dir "$build" "$repo/examples/plugins/$plugin"
done

gpg() { command gpg --batch --no-tty --quiet --trust-model always --pinentry-mode loopback --passphrase "" "$@"; }
gpg --quiet --quick-gen-key "portal-boot demo plugins (throwaway) <demo-plugins@portal-boot.invalid>" \
  ed25519 sign 2y 2>/dev/null
fingerprint=$(gpg --with-colons --list-secret-keys | awk -F: '$1 == "fpr" { print $10; exit }')

for plugin in "${plugins[@]}"; do
  # Replace only this script's own outputs: other wheels in the folder are left alone.
  rm -f "$wheel_dir"/portal_"$plugin"-*.whl "$wheel_dir"/portal_"$plugin"-*.whl.asc
done
for wheel in "$build"/*.whl; do
  # 0644: flit_core writes wheels through mkstemp (mode 0600), and a copy keeps the mode;
  # the container's user (uid 10001, or OpenShift's arbitrary uid) must read them from a
  # bind mount, and Dockerfile.with-plugins copies them in with their modes.
  install -m 0644 "$wheel" "$wheel_dir/"
  gpg --yes --local-user "$fingerprint" --armor --detach-sign \
    --output "$wheel_dir/$(basename "$wheel").asc" "$wheel_dir/$(basename "$wheel")"
  chmod 0644 "$wheel_dir/$(basename "$wheel").asc"
done
gpg --armor --export "$fingerprint" >"$key_dir/demo-signing-key.asc"
chmod 0644 "$key_dir/demo-signing-key.asc"

echo "build-example-plugins: signed with the throwaway demo key $fingerprint"
for wheel in "$build"/*.whl; do
  name=$(basename "$wheel")
  echo "  $wheel_dir/$name  sha256 $(sha256sum "$wheel_dir/$name" | cut -d' ' -f1)"
  echo "  $wheel_dir/$name.asc"
done
echo "  $key_dir/demo-signing-key.asc  (public key: give it to --trusted-keys / PORTAL_BOOT_TRUSTED_KEYS)"
