#!/usr/bin/env bash
# Installs (as root) or names (otherwise) the outside parts the test suite needs.
# Debian packages: add here as the suite grows (mosquitto for the MQTT link, ...).
# Node packages: the OCPP test central system (tests/adapters/ocpp/csms, ocpp-rpc) from its
# committed package-lock.json, whenever node_modules is missing or older than the lock file.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CSMS_DIR=$here/adapters/ocpp/csms
NODE_MIN_MAJOR=18

# openssl: the test CAs of the MQTT and OCPP TLS tests; nodejs, npm: the OCPP test central system
DEBIAN_PACKAGES=(shellcheck mosquitto openssl nodejs npm)
declare -A PROVIDES=()  # package -> command that shows it is there
# The broker the MQTT tests start; Debian puts it in /usr/sbin, which a user's PATH may lack.
PROVIDES[mosquitto]=/usr/sbin/mosquitto
PROVIDES[nodejs]=node  # npm comes with node from some sources (NodeSource): checked by command

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  cmd=${PROVIDES[$pkg]:-$pkg}
  if [[ $cmd == /* ]]; then
    [[ -x $cmd ]] || missing+=("$pkg")
  else
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done

if ((${#missing[@]} > 0)); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "make test needs these Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages for the test suite: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

node_version=$(node --version)  # v20.20.2
node_major=${node_version#v}
node_major=${node_major%%.*}
if ((node_major < NODE_MIN_MAJOR)); then
  echo "the OCPP test central system needs node >= $NODE_MIN_MAJOR and npm; found node $node_version" >&2
  echo "install a newer nodejs (with npm), e.g. from https://nodejs.org or NodeSource" >&2
  exit 1
fi

# npm ci writes node_modules/.package-lock.json: older than package-lock.json means stale.
stamp=$CSMS_DIR/node_modules/.package-lock.json
if [[ ! -f $stamp || $CSMS_DIR/package-lock.json -nt $stamp ]]; then
  echo "installing the node packages of the OCPP test central system ($CSMS_DIR)"
  (cd "$CSMS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi
