#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need when it is missing,
# checks formatting and lints, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need gfortran || missing+=(gfortran)
need make || missing+=(make)
need flock || missing+=(util-linux)
need cc || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && need apt-get; then
    echo "installing: ${missing[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "not installed (and not root to install): ${missing[*]}; the tests that need them say they skip"
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# The server's failure points are compiled in only with their feature.
cargo test -p rmem-server --features fault-points --test faultpoints
