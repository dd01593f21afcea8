#!/usr/bin/env bash
# Installs what datatunnel needs to build, test and run its demo on Debian 12
# (Java 17, a JDK for the admin helper kafka.sh compiles, and Maven run the
# real Kafka brokers of scripts/kafka.sh).
# Idempotent: asks dpkg first and calls apt-get only for what is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libpq-dev postgresql postgresql-contrib
  librdkafka-dev kcat
  openjdk-17-jdk-headless maven openssl python3
  libcli11-dev libtomlplusplus-dev libspdlog-dev libfmt-dev
  libsimdjson-dev rapidjson-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
)
if [[ "${1:-}" == "--bench" ]]; then packages+=(gnuplot-nox hyperfine); fi
if [[ "${1:-}" == "--fuzz" ]]; then packages+=(clang libclang-rt-14-dev); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
if [[ $(id -u) -ne 0 ]]; then
  sudo=sudo
  command -v sudo >/dev/null || { echo "install-deps: missing packages (${missing[*]}); run this script as root" >&2; exit 1; }
else
  sudo=
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has no package lists yet; refresh them when the install cannot find a package.
if ! $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
