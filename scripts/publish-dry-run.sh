#!/usr/bin/env bash
# `cargo publish --dry-run` of wgpose and wgpose-weights (demo and web are publish = false): packages
# both, builds the packages as crates.io would, and checks each .crate is under crates.io's 10 MB.
# wgpose-weights/models/ is generated (scripts/bundle-weights.sh), not committed, so cargo sees it
# as uncommitted: this script checks instead that nothing else is, then passes --allow-dirty.
# To publish for real, run it, then the same cargo command without --dry-run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "$(git status --porcelain --untracked-files=normal)" ]; then
  git status --short
  echo "error: commit or stash the changes above first (only the generated weights may be uncommitted)" >&2
  exit 1
fi
bash scripts/bundle-weights.sh
# The verification only has to show that the packages compile; it builds in the dev profile,
# whose dependencies Cargo.toml optimises (opt-level 3, full debug info), which made it the
# slowest step of `.ci/run` on a clean machine. Unoptimised, without debug info, it checks the same.
cargo publish --dry-run --allow-dirty -p wgpose-weights -p wgpose \
  --config 'profile.dev.package."*".opt-level=0' --config profile.dev.opt-level=0 \
  --config profile.dev.debug=0
for crate in $(find target/package -maxdepth 2 -name "wgpose*.crate"); do
  size=$(stat -c %s "$crate")
  echo "$crate: $size bytes"
  if [ "$size" -ge 10000000 ]; then
    echo "error: $crate is over crates.io's 10 MB limit" >&2
    exit 1
  fi
done
