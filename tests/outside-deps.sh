#!/usr/bin/env bash
# Installs (as root) or names (otherwise) the outside parts the test suite needs.
# Debian packages: add here as the suite grows (mosquitto for the MQTT link, ...).
set -euo pipefail

DEBIAN_PACKAGES=(shellcheck mosquitto openssl)  # openssl: the test CA of the MQTT TLS test
declare -A PROVIDES=()  # package -> command that shows it is there
# The broker the MQTT tests start; Debian puts it in /usr/sbin, which a user's PATH may lack.
PROVIDES[mosquitto]=/usr/sbin/mosquitto

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  cmd=${PROVIDES[$pkg]:-$pkg}
  if [[ $cmd == /* ]]; then
    [[ -x $cmd ]] || missing+=("$pkg")
  else
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "make test needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages for the test suite: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
