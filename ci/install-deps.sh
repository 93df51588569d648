#!/usr/bin/env bash
# Installs what a fresh Debian bookworm machine needs to build and test fastq: the Rust crates (from Debian
# when crates.io is unreachable), rabbitmq-c, and the servers the integration tests start on loopback.
set -euo pipefail

APT_PACKAGES=(
  # Rust crates vendored by Debian (used only when crates.io is unreachable)
  librust-pyo3-dev librust-flate2-dev librust-libz-sys-dev librust-bzip2-dev
  # C libraries and tools
  librabbitmq-dev zlib1g-dev libbz2-dev pkg-config sqlite3 openssl
  # servers started by the tests on 127.0.0.1
  redis-server rabbitmq-server
  # memcached for the cache result backend's tests (tests/servers.py runs its own on a free port)
  memcached
  # PostgreSQL for the database result backend's tests (tests/servers.py runs initdb and postgres itself)
  postgresql
  # headless browser for the dashboard test (Selenium drives /usr/bin/chromium through /usr/bin/chromedriver)
  chromium chromium-driver
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Point cargo at Debian's vendored registry only when crates.io cannot be reached, and only through
# $CARGO_HOME/config.toml, so rust/Cargo.toml stays buildable unchanged where crates.io works.
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
if ! timeout 8 curl -fsS -o /dev/null https://index.crates.io/config.json 2>/dev/null; then
  mkdir -p "$CARGO_HOME"
  if ! grep -qs 'replace-with = "debian"' "$CARGO_HOME/config.toml"; then
    cat "$(dirname "$0")/cargo-offline.toml" >> "$CARGO_HOME/config.toml"
  fi
fi
