#!/usr/bin/env bash
# Make this machine able to build and run the project's images with podman, for the image
# rehearsal (tests/images/). Idempotent: each step is skipped when its result is there.
# Run as root on Debian 12 (bookworm) or later; scripts/test.sh calls it.
#
#   bash scripts/image-setup.sh        # prints "image-setup: ready" and the times it spent
#
# 1. apt: podman, buildah, runc, fuse-overlayfs, slirp4netns, uidmap, debootstrap.
# 2. $CONF (a containers.conf of its own, used through CONTAINERS_CONF, so the machine's
#    /etc/containers is left alone): runc instead of crun (crun 1.8 refuses a VM's hybrid
#    cgroup layout), and default ulimits within this machine's hard limits (podman's
#    defaults for root exceed them and root may lack CAP_SYS_RESOURCE).
# 3. Where no registry is reachable: a debootstrapped trixie (localhost/debian-minbase:trixie)
#    and, FROM it, local stand-ins tagged docker.io/library/python:3.13-slim-trixie and
#    docker.io/library/postgres:16 (tests/images/standin/), rebuilt when their files change.
#    An image pulled from a registry under those names is kept.
# 4. docker-compose 1.29.2 (the Python one, from PyPI) in a virtualenv of its own
#    ($CACHE/compose-venv): it pins old dependencies (PyYAML 5, docker 5, urllib3 < 2)
#    that must not meet the project's. It talks to `podman system service`.
#
# Environment: PORTAL_BOOT_IMAGE_CACHE (default /var/cache/portal-boot-images),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${PORTAL_BOOT_IMAGE_CACHE:-/var/cache/portal-boot-images}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CONF=$CACHE/containers.conf
export CONTAINERS_CONF=$CONF
say() { echo "image-setup: $*" >&2; }
t0=$(date +%s); ts=$t0
took() { local now; now=$(date +%s); say "$1 ($((now - ts)) s)"; ts=$now; }

[ "$(id -u)" = 0 ] || { say "run as root (rootful podman)"; exit 2; }
mkdir -p "$CACHE"

# ------------------------------------------------------------------------------ 1. apt
need=()
for pair in podman:podman buildah:buildah runc:runc fuse-overlayfs:fuse-overlayfs \
            slirp4netns:slirp4netns newuidmap:uidmap debootstrap:debootstrap; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)  # docker-compose's venv
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  took "packages installed"
fi

# ------------------------------------------------------------------------------ 2. containers.conf
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
cat > "$CONF.new" <<CONFEOF
# Written by scripts/image-setup.sh for the image rehearsal; used through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
CONFEOF
mv "$CONF.new" "$CONF"

# ------------------------------------------------------------------------------ 3. base images
# Where podman cannot run a container at all (no user namespaces, no cgroups, ...), say so
# once and stop here: the rehearsal then skips itself with this reason.
rm -f "$CACHE/unusable"
unusable() {
  echo "$1" > "$CACHE/unusable"
  say "podman cannot run a container here ($1): the image rehearsal will be skipped"
  exit 0
}

# A stand-in is rebuilt when its Containerfile changed (its sha256 is the image's label).
# An image without that label (pulled from a registry) is kept as it is.
standin_label() { cat "$1" tests/images/standin/postgres-entrypoint.sh | sha256sum | cut -c1-16; }
standin_current() {  # IMAGE CONTAINERFILE
  local have
  have=$(podman image inspect --format '{{index .Labels "org.portal-boot.standin"}}' "$1" 2>/dev/null) || return 1
  [ "$have" = "$(standin_label "$2")" ] || [ "$have" = "<no value>" ]
}
PY_CF=tests/images/standin/python-3.13-slim-trixie.Containerfile
PG_CF=tests/images/standin/postgres-16.Containerfile
if ! standin_current docker.io/library/python:3.13-slim-trixie "$PY_CF" \
   || ! standin_current docker.io/library/postgres:16 "$PG_CF"; then
  if ! podman image exists localhost/debian-minbase:trixie; then
    say "debootstrap trixie (minbase) from $MIRROR"
    rootfs=$(mktemp -d /var/tmp/pb-trixie-XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    if ! debootstrap --variant=minbase trixie "$rootfs" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1; then
      tail -20 "$CACHE/debootstrap.log" >&2; say "debootstrap failed (log: $CACHE/debootstrap.log)"; exit 1
    fi
    tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' \
      - localhost/debian-minbase:trixie >/dev/null
    rm -rf "$rootfs"; trap - EXIT
    took "debootstrapped trixie -> localhost/debian-minbase:trixie"
  fi
  if ! probe=$(podman run --rm --network none localhost/debian-minbase:trixie true 2>&1); then
    unusable "$(printf '%s\n' "$probe" | tail -1)"
  fi
  if ! standin_current docker.io/library/python:3.13-slim-trixie "$PY_CF"; then
    podman build -q --format docker --pull=never --label "org.portal-boot.standin=$(standin_label "$PY_CF")" \
      -t docker.io/library/python:3.13-slim-trixie -f "$PY_CF" tests/images/standin >/dev/null
    took "stand-in docker.io/library/python:3.13-slim-trixie built"
  fi
  if ! standin_current docker.io/library/postgres:16 "$PG_CF"; then
    podman build -q --format docker --pull=never --label "org.portal-boot.standin=$(standin_label "$PG_CF")" \
      -t docker.io/library/postgres:16 -f "$PG_CF" tests/images/standin >/dev/null
    took "stand-in docker.io/library/postgres:16 built"
  fi
fi

# ------------------------------------------------------------------------------ 4. docker-compose
DC=$CACHE/compose-venv
if ! "$DC/bin/docker-compose" version >/dev/null 2>&1; then
  say "docker-compose 1.29.2 into $DC"
  rm -rf "$DC"; python3 -m venv "$DC"
  # Only PyPI: the host's pip configuration (find-links, extra indexes) plays no part.
  pipi() { PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$DC/bin/pip" install -q --isolated \
             --disable-pip-version-check --index-url https://pypi.org/simple "$@"; }
  # PyYAML 5.4.1 (docker-compose 1.29.2 wants < 6) has no wheel for recent Pythons and its
  # sdist does not build with Cython 3: build it with an older Cython, no isolation.
  pipi "cython<3" wheel setuptools
  pipi --no-build-isolation "PyYAML==5.4.1"
  pipi "docker-compose==1.29.2" "docker[ssh]==5.0.3" "requests==2.31.0" "urllib3<2"
  took "docker-compose installed"
fi
# A stand-in replaced above leaves its old image untagged.
old=$(podman images -q --filter dangling=true --filter since=localhost/debian-minbase:trixie 2>/dev/null || true)
[ -z "$old" ] || podman rmi $old >/dev/null 2>&1 || true  # not -f: one in use stays
say "ready ($(( $(date +%s) - t0 )) s): CONTAINERS_CONF=$CONF, docker-compose $DC/bin/docker-compose"
