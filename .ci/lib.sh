# Shared helpers for the .ci/ suites. Source it; do not run it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n=== %s\n' "$*"; }

# rustup component/target installs are idempotent; they only download when missing.
need_component() { # toolchain component...
  local tc=$1; shift
  for c in "$@"; do
    if ! rustup component list --toolchain "$tc" --installed 2>/dev/null | grep -q "^$c"; then
      say "installing $c for $tc"
      rustup component add --toolchain "$tc" "$c"
    fi
  done
}
need_target() { # toolchain target
  if ! rustup target list --toolchain "$1" --installed 2>/dev/null | grep -qx "$2"; then
    say "installing target $2 for $1"
    rustup target add --toolchain "$1" "$2"
  fi
}
need_nightly() {
  if ! rustup toolchain list | grep -q '^nightly'; then
    say "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
  fi
}
