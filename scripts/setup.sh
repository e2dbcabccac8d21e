#!/usr/bin/env bash
# Installs what hymba.cpp needs to build, test and train, from Debian's packages.
set -euo pipefail
PKGS=(
  build-essential cmake pkg-config git
  libopenblas-dev libopenblas-openmp-dev libomp-dev nlohmann-json3-dev libcli11-dev libhwy-dev libcpp-httplib-dev
  libsentencepiece-dev sentencepiece
  libhiredis-dev redis-server libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev libsimde-dev
  clang libclang-rt-dev
  openmpi-bin libopenmpi-dev
  python3-torch python3-numpy
  nodejs
  bible-kjv-text bible-kjv gnuplot-nox
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "setup: all packages present"
# npm ships inside some nodejs builds; Debian's own nodejs needs the separate npm package.
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm >/dev/null
fi
