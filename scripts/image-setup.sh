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
#    docker.io/library/postgres:16 (tests/images/standin/). An image that already exists
#    (pulled or built earlier) is kept.
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
if ! podman image exists docker.io/library/python:3.13-slim-trixie \
   || ! podman image exists docker.io/library/postgres:16; then
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
  if ! podman image exists docker.io/library/python:3.13-slim-trixie; then
    podman build -q --format docker --pull=never \
      -t docker.io/library/python:3.13-slim-trixie \
      -f tests/images/standin/python-3.13-slim-trixie.Containerfile tests/images/standin >/dev/null
    took "stand-in docker.io/library/python:3.13-slim-trixie built"
  fi
  if ! podman image exists docker.io/library/postgres:16; then
    podman build -q --format docker --pull=never \
      -t docker.io/library/postgres:16 \
      -f tests/images/standin/postgres-16.Containerfile tests/images/standin >/dev/null
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
say "ready ($(( $(date +%s) - t0 )) s): CONTAINERS_CONF=$CONF, docker-compose $DC/bin/docker-compose"
