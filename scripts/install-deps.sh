#!/bin/bash
# Install the Debian packages the spegel-py demo and test suite need (run as root).
#
#   scripts/install-deps.sh [EXTRA_PACKAGE...]
#
# Idempotent and quick when nothing is missing: it asks dpkg what is installed and only then
# runs `apt-get update` + `apt-get install` for what is not. Node.js and npm may come from outside
# Debian (e.g. NodeSource), so those two are looked for as commands, not as packages.
set -euo pipefail

PACKAGES=(
  containerd runc docker-registry skopeo    # the local cluster: nodes, upstream, image copies
  nginx-light vmtouch prometheus wrk        # benchmarks, page-cache control, metrics checks
  chromium chromium-driver                  # headless browser for the /debug/web page test
  curl iproute2 util-linux                  # probes, network namespaces, unshare/mount tools
  golang-github-containerd-containerd-dev   # containerd API .proto files (scripts/gen_protos.sh)
  libgmp-dev gcc make python3-venv python3-dev  # the virtualenv; libp2p's fastecdsa builds from source
)
declare -A COMMAND_PACKAGES=([node]=nodejs [npm]=npm)  # the js-libp2p interop peer (tests/interop)

missing=()
for pkg in "${PACKAGES[@]}" "$@"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
    missing+=("$pkg")
  fi
done
for cmd in "${!COMMAND_PACKAGES[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${COMMAND_PACKAGES[$cmd]}")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
