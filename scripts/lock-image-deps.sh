#!/usr/bin/env bash
# Refresh the image's pinned, hashed dependency sets from PyPI (run it to take newer
# versions, e.g. a security release; commit both files; the image rehearsal in
# tests/images/ builds the image with them):
#
#   bash scripts/lock-image-deps.sh
#
#   requirements/image.txt  portal-boot's runtime dependencies (pyproject.toml's ranges,
#                           resolved for CPython 3.13 on Linux), with the sha256 of every
#                           file PyPI has for each pinned version (so any Linux
#                           architecture's wheel verifies)
#   requirements/build.txt  the build backend that turns portal-boot into a wheel
#
# Dockerfile.base installs them with `pip install --require-hashes`, then portal-boot itself
# with --no-deps: an image built from the same commit gets the same packages, whatever PyPI
# has since. pyproject.toml keeps ranges (it is a library for pip, too).
# Only PyPI: the host's pip and uv configuration (find-links, extra indexes) play no part.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=${UV_VERSION:-0.13.9}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$tools/venv/bin/pip" install -q --isolated \
  --disable-pip-version-check --index-url https://pypi.org/simple "uv==$UV_VERSION"
compile() {
  env -u PIP_FIND_LINKS -u UV_INDEX_URL -u UV_EXTRA_INDEX_URL -u UV_FIND_LINKS \
    "$tools/venv/bin/uv" pip compile --no-config --quiet --index-url https://pypi.org/simple \
    --generate-hashes --python-version 3.13 --python-platform linux --no-header "$@"
}
header() {
  printf '%s\n' "# $1" \
    "# Pinned and hashed for the image (Dockerfile.base installs it with --require-hashes)." \
    "# Refresh: bash scripts/lock-image-deps.sh (uv pip compile from PyPI, Python 3.13, Linux)."
}
compile pyproject.toml -o "$tools/image.txt"
{ header "portal-boot's runtime dependencies, from pyproject.toml."; cat "$tools/image.txt"; } > requirements/image.txt
printf 'setuptools>=65\nwheel\n' > "$tools/build.in"
compile "$tools/build.in" -o "$tools/build.txt"
{ header "The build backend of portal-boot's wheel (pyproject.toml's build-system.requires)."; cat "$tools/build.txt"; } > requirements/build.txt
echo "lock-image-deps: requirements/image.txt and requirements/build.txt refreshed:"
grep -hE '^[a-z0-9]' requirements/image.txt requirements/build.txt | sed 's/ \\$//; s/^/  /'
