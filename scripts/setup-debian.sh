#!/usr/bin/env bash
# Installs what wgpose needs on a fresh Debian 12 machine: a C toolchain for -sys crates and,
# for machines without a GPU, Mesa's software Vulkan driver (lavapipe). Rust itself (cargo,
# rustc >= 1.89) must already be installed. Safe to run again: it skips what is present.
set -euo pipefail
need=()
# The desktop demo (demo/): winit's X11 libraries (dlopened at run time), Xvfb + xauth for its
# headless screenshot test. (Its optional `camera` feature also needs libclang-dev: nokhwa's
# V4L2 bindings are generated with bindgen; the feature is off by default, so it is installed
# only with WGPOSE_CAMERA=1.)
for pkg in mesa-vulkan-drivers libvulkan1 build-essential pkg-config \
  xvfb xauth libx11-6 libx11-xcb1 libxcursor1 libxi6 libxkbcommon0 libxkbcommon-x11-0 \
  ${WGPOSE_CAMERA:+libclang-dev}; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
# The Vulkan loader complains on stderr without a runtime dir; harmless, but keep logs clean.
mkdir -p /tmp/wgpose-xdg && chmod 700 /tmp/wgpose-xdg
