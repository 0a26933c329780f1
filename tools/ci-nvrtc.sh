#!/usr/bin/env bash
# CI block for the CUDA kernels (called by .ci/run): installs Debian's NVRTC 11.8 from the non-free component and
# compiles every kernels/*.cu with it for sm_80 and sm_90 (tools/check-kernels). A kernel that does not compile fails.
# Idempotent; needs root (or sudo) for apt. Set CALM_SKIP_NVRTC_INSTALL=1 to only run the check.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

have_nvrtc() { ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.11\.2'; }

if [ "${CALM_SKIP_NVRTC_INSTALL:-0}" != "1" ] && ! have_nvrtc; then
  # Add the non-free component (Debian 12 deb822 sources or a classic list), once.
  if ! grep -rqs 'non-free' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
     || ! apt-cache policy libnvrtc11.2 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
    echo "ci-nvrtc: adding Debian non-free ($codename) to apt sources"
    $SUDO tee /etc/apt/sources.list.d/calm-nonfree.sources >/dev/null <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    $SUDO apt-get update -qq
  fi
  apt-cache policy libnvrtc11.2 libnvrtc-builtins11.8 | sed -n '1,12p'
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libnvrtc11.2 libnvrtc-builtins11.8
fi

# CALM_NVRTC_INSTALL_ONLY=1: install only (.ci/run then requires the kernel-compile tests inside the suite to run).
if [ "${CALM_NVRTC_INSTALL_ONLY:-0}" = "1" ]; then exit 0; fi
exec "$root/tools/check-kernels" "$@"
