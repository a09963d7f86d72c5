# Sourced by the scripts that build: checks the Rust toolchain before the
# first cargo command, so that an old or missing one is named in one line
# with the command that installs a good one (Debian 12's own cargo, 1.65,
# fails on an edition-2024 manifest with an error that names neither).
#
#   . scripts/lib/rust-toolchain.sh
#   rust_toolchain_ok NAME || exit 1      # NAME starts the message

# The workspace's minimum Rust: rust-version in Cargo.toml.
rust_min_version() {
  sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../../Cargo.toml" | head -n 1
}

# The command that installs a good toolchain here.
rust_install_hint() {
  if [ -r /etc/debian_version ] && [[ "$(cat /etc/debian_version)" == 12* ]]; then
    echo "apt-get install cargo-web (Debian 12's current Rust, from bookworm-security; it brings rustc-web)"
  else
    echo "rustup toolchain install stable (rustup from https://rustup.rs, or your distribution's rustup package)"
  fi
}

# True if version $1 >= version $2.
version_at_least() {
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# Returns 0 if cargo and rustc are there and new enough; otherwise prints
# one line on stderr (what is missing, what installs it) and returns 1.
rust_toolchain_ok() {
  local who=$1 want tool have
  want=$(rust_min_version)
  for tool in cargo rustc; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "$who: no $tool found: Rust $want or newer is needed; install it with: $(rust_install_hint)" >&2
      return 1
    fi
    have=$("$tool" --version 2>/dev/null | awk '{ print $2 }')
    if [ -z "$have" ] || ! version_at_least "${have%%-*}" "$want"; then
      echo "$who: $tool ${have:-(unknown version)} at $(command -v "$tool") is too old: Rust $want or newer is needed; install it with: $(rust_install_hint)" >&2
      return 1
    fi
  done
}
