#!/usr/bin/env bash
# Install (or remove) evsite as a systemd service from this checkout. Run as root.
# Idempotent: running it again upgrades the venv and the unit, and keeps config and state.
set -euo pipefail

readonly UNIT_NAME=evsite.service
readonly UNIT_DIR=/etc/systemd/system
readonly CONF_DIR=/etc/evsite
readonly TECH_GROUP=evsite
readonly CLI_LINK=/usr/local/bin/evsite

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly SRC_DIR="${SCRIPT_DIR%/*}"

prefix=/opt/evsite
prefix_given=0
python=python3
enable=0
uninstall=0
purge=0

usage() {
    cat <<EOF
Usage: $(basename -- "$0") [OPTIONS]

Install the evsite controller from this checkout as the systemd service ${UNIT_NAME}:
  - a virtualenv in PREFIX/.venv with evsite installed into it (pip install of the checkout)
  - the unit in ${UNIT_DIR}/${UNIT_NAME}, its ExecStart pointing at that venv
  - ${CLI_LINK} -> PREFIX/.venv/bin/evsite, so technicians can type 'evsite status'
  - ${CONF_DIR}/ (root:${TECH_GROUP}, 0750) with site.yaml copied from
    config/example-site.yaml if there is none yet (an existing site.yaml is never touched)
  - the system group '${TECH_GROUP}': the CLI socket's group; add technicians with
    'usermod -aG ${TECH_GROUP} NAME'
Then systemctl daemon-reload. The service is started only with --enable.
Running it again upgrades the venv and the unit; config and state are kept.

Options:
  --enable          systemctl enable --now ${UNIT_NAME} (restart it if already running)
  --prefix DIR      install root for the venv (default: /opt/evsite)
  --python EXE      Python 3.11+ interpreter to build the venv with (default: python3)
  --uninstall       stop and disable the service, remove the unit and PREFIX/.venv;
                    keep ${CONF_DIR}, the state directory and the group
  --purge           with --uninstall: also remove ${CONF_DIR}, the state directory
                    (the SQLite journals!) and the group '${TECH_GROUP}'
  -h, --help        show this help and exit

pip honours its usual environment variables (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, ...)
for offline or mirrored installs.
EOF
}

log() { printf 'install.sh: %s\n' "$*"; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

parse_args() {
    while (($# > 0)); do
        case "$1" in
            --enable) enable=1 ;;
            --uninstall) uninstall=1 ;;
            --purge) purge=1 ;;
            --prefix)
                (($# >= 2)) || die "--prefix needs a directory"
                prefix="$2"
                prefix_given=1
                shift
                ;;
            --prefix=*)
                prefix="${1#*=}"
                prefix_given=1
                ;;
            --python)
                (($# >= 2)) || die "--python needs an interpreter"
                python="$2"
                shift
                ;;
            --python=*) python="${1#*=}" ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) die "unknown option '$1' (see --help)" ;;
        esac
        shift
    done
    prefix="${prefix%/}"
    # Absolute, not /, and nothing that needs quoting in ExecStart= or escaping in sed.
    [[ "$prefix" =~ ^/[A-Za-z0-9._/-]+$ ]] \
        || die "--prefix must be an absolute path of [A-Za-z0-9._/-], not / (got '$prefix')"
    ((purge == 0 || uninstall == 1)) || die "--purge only goes with --uninstall"
    ((enable == 0 || uninstall == 0)) || die "--enable and --uninstall exclude each other"
}

# systemctl only works when systemd is the running init (not in a chroot or container build).
have_systemd() { [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; }

ensure_group() {
    if getent group "$TECH_GROUP" >/dev/null; then
        log "group '$TECH_GROUP' exists"
    else
        groupadd --system "$TECH_GROUP"
        log "created system group '$TECH_GROUP' (add technicians: usermod -aG $TECH_GROUP NAME)"
    fi
}

install_venv() {
    local venv="$prefix/.venv" build
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$python is older than Python 3.11 (use --python)"
    install -d -m 0755 -o root -g root "$prefix"
    if [[ ! -x "$venv/bin/python" ]]; then
        "$python" -m venv "$venv"
        log "created venv $venv"
    fi
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # Build from a clean copy: pip would otherwise write build/ and *.egg-info as root into
    # the (possibly user-owned) checkout.
    build=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "rm -rf -- '$build'" EXIT
    tar -C "$SRC_DIR" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' \
        --exclude=./build --exclude='./*.egg-info' -cf - . | tar -C "$build" -xf -
    # --force-reinstall --no-deps: the same version number from a newer checkout is still
    # reinstalled; the second call adds or upgrades dependencies only where needed.
    "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$build"
    "$venv/bin/python" -m pip install --quiet "$build"
    rm -rf -- "$build"
    trap - EXIT
    [[ -x "$venv/bin/evsite" ]] || die "pip did not create $venv/bin/evsite"
    log "installed evsite into $venv"
}

install_unit() {
    local src="$SCRIPT_DIR/$UNIT_NAME" tmp
    [[ -f "$src" ]] || die "missing $src"
    tmp=$(mktemp)
    sed "s|^ExecStart=/opt/evsite/.venv/bin/evsite |ExecStart=$prefix/.venv/bin/evsite |" \
        "$src" >"$tmp"
    grep -q "^ExecStart=$prefix/.venv/bin/evsite " "$tmp" \
        || die "could not set ExecStart in $UNIT_NAME"
    install -m 0644 -o root -g root "$tmp" "$UNIT_DIR/$UNIT_NAME"
    rm -f -- "$tmp"
    log "installed $UNIT_DIR/$UNIT_NAME"
}

install_cli_link() {
    if [[ -e "$CLI_LINK" && ! -L "$CLI_LINK" ]]; then
        log "warning: $CLI_LINK exists and is not a symlink; left alone"
        return
    fi
    ln -sfn -- "$prefix/.venv/bin/evsite" "$CLI_LINK"
    log "linked $CLI_LINK -> $prefix/.venv/bin/evsite"
}

install_config() {
    local example="$SRC_DIR/config/example-site.yaml"
    # root owns it (the service cannot rewrite its own config); the group reads it: the
    # service runs with it as its primary group, technicians run `evsite config check`.
    install -d -m 0750 -o root -g "$TECH_GROUP" "$CONF_DIR"
    if [[ -e "$CONF_DIR/site.yaml" ]]; then
        log "kept existing $CONF_DIR/site.yaml"
    elif [[ -f "$example" ]]; then
        install -m 0640 -o root -g "$TECH_GROUP" "$example" "$CONF_DIR/site.yaml"
        log "created $CONF_DIR/site.yaml from config/example-site.yaml: edit it for this site"
    else
        log "warning: no $CONF_DIR/site.yaml and no $example to copy; write one before starting"
    fi
}

reload_and_enable() {
    if ! have_systemd; then
        log "systemd is not running here: skipped daemon-reload and enable"
        return
    fi
    systemctl daemon-reload
    if ((enable)); then
        systemctl enable "$UNIT_NAME"
        # restart, not start: a rerun after an upgrade must load the new code.
        systemctl restart "$UNIT_NAME"
        log "enabled and (re)started $UNIT_NAME; follow it with: journalctl -fu ${UNIT_NAME%.service}"
    elif systemctl is-active --quiet "$UNIT_NAME"; then
        log "$UNIT_NAME still runs the previous code: systemctl restart $UNIT_NAME"
    else
        log "not started; run with --enable, or: systemctl enable --now $UNIT_NAME"
    fi
}

do_install() {
    ensure_group
    install_venv
    install_unit
    install_cli_link
    install_config
    reload_and_enable
}

# The prefix the unit was installed with, so --uninstall finds the venv without --prefix.
installed_prefix() {
    local line
    line=$(grep -m1 '^ExecStart=' "$UNIT_DIR/$UNIT_NAME" 2>/dev/null) || return 0
    line="${line#ExecStart=}"
    line="${line%% *}"
    [[ "$line" == */.venv/bin/evsite ]] && printf '%s\n' "${line%/.venv/bin/evsite}"
    return 0
}

do_uninstall() {
    local found
    if ((prefix_given == 0)); then
        found=$(installed_prefix)
        if [[ -n "$found" && "$found" =~ ^/[A-Za-z0-9._/-]+$ ]]; then
            prefix="$found"
        fi
    fi
    if have_systemd; then
        systemctl disable --now "$UNIT_NAME" 2>/dev/null || true
    fi
    rm -f -- "$UNIT_DIR/$UNIT_NAME"
    rm -rf -- "$UNIT_DIR/$UNIT_NAME.d"
    if have_systemd; then
        systemctl daemon-reload
        systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
    fi
    if [[ -L "$CLI_LINK" && "$(readlink -- "$CLI_LINK")" == "$prefix/.venv/bin/evsite" ]]; then
        rm -f -- "$CLI_LINK"
    fi
    rm -rf -- "$prefix/.venv"
    rmdir -- "$prefix" 2>/dev/null || true
    log "removed the unit and $prefix/.venv"
    if ((purge)); then
        # DynamicUser keeps state in /var/lib/private/evsite behind a /var/lib/evsite symlink.
        rm -rf -- "$CONF_DIR" /var/lib/private/evsite /var/lib/evsite
        if getent group "$TECH_GROUP" >/dev/null; then
            groupdel "$TECH_GROUP"
        fi
        log "purged $CONF_DIR, the state directory and the group '$TECH_GROUP'"
    else
        log "kept $CONF_DIR, /var/lib/evsite and the group '$TECH_GROUP' (--purge removes them)"
    fi
}

main() {
    parse_args "$@"
    ((EUID == 0)) || die "run as root (it writes $UNIT_DIR, $CONF_DIR and $prefix)"
    if ((uninstall)); then
        do_uninstall
    else
        do_install
    fi
}

main "$@"
