# Sourced by scripts/serve and scripts/test: installs the Debian packages missing for building
# the service (a C toolchain, zlib and OpenSSL headers: the rdkafka crate builds librdkafka from
# source) and running its embedded default (PostgreSQL's server binaries), plus any named as
# arguments, with apt-get (as root, or through sudo). Sets pg_bin to PostgreSQL's binaries.

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_missing() {
  local packages=("$@")
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || packages+=(postgresql)
  command -v gcc >/dev/null || packages+=(gcc)
  command -v make >/dev/null || packages+=(make)
  [ -f /usr/include/zlib.h ] || packages+=(zlib1g-dev)
  command -v pkg-config >/dev/null || packages+=(pkg-config)
  # librdkafka's TLS support links OpenSSL.
  [ -f /usr/include/openssl/ssl.h ] || packages+=(libssl-dev)
  if [ ${#packages[@]} -gt 0 ]; then
    printf '\033[1m[setup]\033[0m installing %s\n' "${packages[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  fi
  pg_bin=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
  [ -n "$pg_bin" ] || pg_bin=$(dirname "$(command -v initdb)")
}
