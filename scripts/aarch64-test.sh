#!/usr/bin/env bash
# Cross-builds wgpose for aarch64 Linux and runs the CPU executor's tests (the GEMM kernels'
# unit tests and tests/cpu_ops.rs, against the plain reference) under qemu-user: the portable
# kernel path (NEON through LLVM's vectoriser, FMA baseline) that ARM machines run.
# Installs what is missing: the rustup target, Debian's cross gcc and qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
# Missing tools that cannot be installed (no network) skip the run loudly; failing tests fail it.
skip() { echo "aarch64 CPU tests SKIPPED: $1" >&2; exit 0; }
if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
  rustup target add aarch64-unknown-linux-gnu || skip "rustup could not add aarch64-unknown-linux-gnu"
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null; } \
    || skip "apt-get could not install gcc-aarch64-linux-gnu / qemu-user"
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# The kernels under test are wgpose's own, built at opt-level 3 as users get them; the other
# crates (wgpu, naga, tract, criterion: compiled only because the test targets link them, none of
# them run here) are left unoptimised, which halves this cross build, a slow step of `.ci/run`.
# Without the default `cli` feature: no CLI binary (clap) to build for the integration test.
ARGS=(--release --no-default-features --target aarch64-unknown-linux-gnu --target-dir "${AARCH64_TARGET_DIR:-target}"
  --config 'profile.release.package."*".opt-level=0' --config 'profile.release.package."*".codegen-units=256')
cargo test "${ARGS[@]}" --lib --test cpu_ops --no-run
cargo test "${ARGS[@]}" --lib -- cpu::
cargo test "${ARGS[@]}" --test cpu_ops
