# shellcheck shell=bash
# tsubame-ci: a loopback fleet of SSH target servers for the tests. Sourced by
# scripts/test after scripts/lib/common.sh; not meant to be executed.
#
#   tsubame_fleet_start DIR N   start N sshd processes on 127.0.0.1 (one per
#                               port: one sshd listens on at most 16 sockets),
#                               export the TSUBAME_TEST_SSH_* variables below,
#                               write them to DIR/env and print the ports
#   tsubame_fleet_stop DIR      stop them, with every process they started
#
# Each sshd runs with its own configuration, host keys, pid file and log in
# DIR; the system sshd and /etc/ssh stay untouched. Several fleets may run on
# one machine at once (a developer's and a test run): what they share is
# machine-wide and only ever written with the same content. That is the test
# accounts, created when missing (root only): tsubame-target (shell /bin/sh,
# home /home/tsubame-target, so sshd prints no "Could not chdir" line) and
# tsubame-noshell, whose login shell (/var/lib/tsubame-fleet/noshell) answers
# like a host without /bin/sh does; and their password, random, made once
# per machine and kept in /var/lib/tsubame-fleet/password (root only). Only
# these two users may log in to a fleet (AllowUsers), only from 127.0.0.1.
#
# Exported for the tests:
#   TSUBAME_TEST_SSH_HOST          127.0.0.1
#   TSUBAME_TEST_SSH_PORTS         comma-separated ports
#   TSUBAME_TEST_SSH_USER          tsubame-target
#   TSUBAME_TEST_SSH_PASSWORD      its password (random, per machine)
#   TSUBAME_TEST_SSH_NOSHELL_USER  tsubame-noshell (same password)
#   TSUBAME_TEST_SSH_KEY_ED25519   private key files (authorized for both users):
#   TSUBAME_TEST_SSH_KEY_ECDSA       ECDSA P-256 in PEM format
#   TSUBAME_TEST_SSH_KEY_ED25519_PASSPHRASE  ed25519, OpenSSH format, encrypted
#   TSUBAME_TEST_SSH_KEY_PASSPHRASE  its passphrase
#   TSUBAME_TEST_SSH_KEY_RSA         RSA 3072 in PEM format (OpenSSH >= 8.8 refuses
#                                    the SHA-1 signatures libssh2 1.10 makes)
#   TSUBAME_TEST_SSH_DIR           DIR (sshd-PORT.pid, sshd-PORT.log, host keys, shared/
#                                  a directory both the tests and the target user can write)
#   TSUBAME_TEST_SSH_OPENSSH_VERSION  e.g. 9.2

TSUBAME_FLEET_USER="tsubame-target"
TSUBAME_FLEET_NOSHELL_USER="tsubame-noshell"
TSUBAME_FLEET_SSHD="/usr/sbin/sshd"
TSUBAME_FLEET_STATE="/var/lib/tsubame-fleet"

# _tsubame_fleet_user NAME HOME SHELL PASSWORD: create the test account, or
# correct it when it differs (only then: another fleet may be using it).
_tsubame_fleet_user() {
    local name=$1 home=$2 shell=$3 password=$4 hash entry salt
    if ! id -u "${name}" >/dev/null 2>&1; then
        tsubame_log "fleet: creating the test user ${name}"
        useradd --user-group --no-create-home --home-dir "${home}" --shell "${shell}" "${name}" 2>/dev/null \
            || id -u "${name}" >/dev/null 2>&1 || return 1
    fi
    entry=$(getent passwd "${name}")
    if [[ $(cut -d: -f6 <<<"${entry}") != "${home}" || $(cut -d: -f7 <<<"${entry}") != "${shell}" ]]; then
        usermod --home "${home}" --shell "${shell}" "${name}" || return 1
    fi
    # The password: set it when the stored hash does not match it.
    hash=$(getent shadow "${name}" | cut -d: -f2)
    salt=$(cut -d'$' -f3 <<<"${hash}")
    # shellcheck disable=SC2016 # a literal "$6$" (SHA-512 crypt)
    if [[ ${hash} != '$6$'* || $(openssl passwd -6 -salt "${salt}" -stdin <<<"${password}") != "${hash}" ]]; then
        usermod --password "$(openssl passwd -6 -stdin <<<"${password}")" "${name}" || return 1
    fi
    if [[ ${home} != / ]]; then
        mkdir -p "${home}"
        chown "${name}:" "${home}"
        chmod 0755 "${home}"
    fi
}

# _tsubame_fleet_write FILE MODE: stdin to FILE (atomically; unchanged when equal).
_tsubame_fleet_write() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "${file}.XXXXXX") || return 1
    cat >"${tmp}"
    chmod "${mode}" "${tmp}"
    if cmp -s "${tmp}" "${file}"; then
        rm -f "${tmp}"
    else
        mv -f "${tmp}" "${file}"
    fi
}

# _tsubame_fleet_wait_port PORT PID: wait until PORT accepts connections (5 s).
_tsubame_fleet_wait_port() {
    local port=$1 pidfile=$2 i
    for ((i = 0; i < 100; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
            return 0
        fi
        if ((i > 10)) && ! tsubame_pid_alive "${pidfile}" sshd; then
            return 1
        fi
        sleep 0.05
    done
    return 1
}

# _tsubame_fleet_descendants PID: PID's descendants, deepest last.
_tsubame_fleet_descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "${child}"
        _tsubame_fleet_descendants "${child}"
    done
}

tsubame_fleet_start() {
    tsubame_log "fleet: starting $2 sshd in $1"
    local dir count=$2 key port pidfile i tries password version
    [[ ${count} =~ ^[1-9][0-9]*$ ]] || {
        tsubame_error "tsubame_fleet_start: bad count '${count}'"
        return 1
    }
    tsubame_is_root || {
        tsubame_error "fleet: creating the test users needs root"
        return 1
    }
    [[ -x ${TSUBAME_FLEET_SSHD} ]] || {
        tsubame_error "fleet: ${TSUBAME_FLEET_SSHD} missing (Debian package openssh-server)"
        return 1
    }
    dir=$(realpath -m "$1")
    mkdir -p "${dir}/shared"
    # The target users read authorized_keys from here.
    chmod 0711 "${dir}"
    chmod 1777 "${dir}/shared"
    # sshd's privilege separation directory.
    mkdir -p /run/sshd
    chmod 0755 /run/sshd

    # Host keys, and the users' keys (the tests read the private ones as root).
    [[ -f ${dir}/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -C fleet-host -f "${dir}/ssh_host_ed25519_key" || return 1
    [[ -f ${dir}/ssh_host_ecdsa_key ]] || ssh-keygen -q -t ecdsa -b 256 -N '' -C fleet-host -f "${dir}/ssh_host_ecdsa_key" || return 1
    [[ -f ${dir}/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C tsubame-test -f "${dir}/id_ed25519" || return 1
    [[ -f ${dir}/id_ecdsa ]] || ssh-keygen -q -t ecdsa -b 256 -m PEM -N '' -C tsubame-test -f "${dir}/id_ecdsa" || return 1
    [[ -f ${dir}/id_rsa ]] || ssh-keygen -q -t rsa -b 3072 -m PEM -N '' -C tsubame-test -f "${dir}/id_rsa" || return 1
    if [[ ! -f ${dir}/id_ed25519_pass ]]; then
        (umask 077 && openssl rand -hex 12 >"${dir}/passphrase") || return 1
        ssh-keygen -q -t ed25519 -N "$(cat "${dir}/passphrase")" -C tsubame-test -f "${dir}/id_ed25519_pass" || return 1
    fi
    cat "${dir}"/id_ed25519.pub "${dir}"/id_ecdsa.pub "${dir}"/id_rsa.pub "${dir}"/id_ed25519_pass.pub >"${dir}/authorized_keys"
    chmod 0644 "${dir}/authorized_keys"

    # Machine-wide, under a lock (fleets may start together): the accounts,
    # their password and the fake login shell.
    mkdir -p "${TSUBAME_FLEET_STATE}"
    chmod 0755 "${TSUBAME_FLEET_STATE}"
    (
        flock 9 || exit 1
        if [[ ! -s ${TSUBAME_FLEET_STATE}/password ]]; then
            openssl rand -hex 16 | _tsubame_fleet_write "${TSUBAME_FLEET_STATE}/password" 0600 || exit 1
        fi
        password=$(cat "${TSUBAME_FLEET_STATE}/password")
        # A login shell that answers as a host without /bin/sh does.
        # shellcheck disable=SC2016 # $0 is for the shell that runs it
        printf '#!/bin/sh\necho "$0: 1: /bin/sh: not found" >&2\nexit 127\n' \
            | _tsubame_fleet_write "${TSUBAME_FLEET_STATE}/noshell" 0755 || exit 1
        _tsubame_fleet_user "${TSUBAME_FLEET_USER}" "/home/${TSUBAME_FLEET_USER}" /bin/sh "${password}" || exit 1
        _tsubame_fleet_user "${TSUBAME_FLEET_NOSHELL_USER}" / "${TSUBAME_FLEET_STATE}/noshell" "${password}" || exit 1
    ) 9>"${TSUBAME_FLEET_STATE}/lock" || {
        tsubame_error "fleet: could not set up the test users"
        return 1
    }
    password=$(cat "${TSUBAME_FLEET_STATE}/password")

    cat >"${dir}/sshd_config" <<EOF
# tsubame-ci test fleet (scripts/lib/fleet.sh); ListenAddress and PidFile come with -o.
HostKey ${dir}/ssh_host_ed25519_key
HostKey ${dir}/ssh_host_ecdsa_key
AuthorizedKeysFile ${dir}/authorized_keys
AllowUsers ${TSUBAME_FLEET_USER}@127.0.0.1 ${TSUBAME_FLEET_NOSHELL_USER}@127.0.0.1
PermitRootLogin no
UsePAM no
StrictModes no
UseDNS no
MaxStartups 1000:30:1000
MaxSessions 1000
MaxAuthTries 6
LoginGraceTime 30
PasswordAuthentication yes
PubkeyAuthentication yes
KbdInteractiveAuthentication no
PermitEmptyPasswords no
AllowTcpForwarding no
AllowAgentForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
PermitUserEnvironment no
PrintMotd no
PrintLastLog no
ClientAliveInterval 0
LogLevel VERBOSE
EOF
    "${TSUBAME_FLEET_SSHD}" -t -f "${dir}/sshd_config" -o ListenAddress=127.0.0.1:1 || {
        tsubame_error "fleet: sshd rejected ${dir}/sshd_config"
        return 1
    }

    local -a ports=()
    for ((i = 0; i < count; i++)); do
        for ((tries = 0; tries < 5; tries++)); do
            port=$(tsubame_free_port) || return 1
            pidfile="${dir}/sshd-${port}.pid"
            rm -f "${pidfile}"
            # sshd daemonizes itself and writes the pid file.
            "${TSUBAME_FLEET_SSHD}" -f "${dir}/sshd_config" -E "${dir}/sshd-${port}.log" \
                -o "ListenAddress=127.0.0.1:${port}" -o "PidFile=${pidfile}" </dev/null || continue
            if _tsubame_fleet_wait_port "${port}" "${pidfile}"; then
                ports+=("${port}")
                break
            fi
            tsubame_warn "fleet: sshd on port ${port} did not start (another process took the port?)"
            tail -n 5 "${dir}/sshd-${port}.log" >&2 2>/dev/null || true
            [[ -s ${pidfile} ]] && kill "$(head -n 1 "${pidfile}")" 2>/dev/null
        done
        if ((tries == 5)); then
            tsubame_error "fleet: could not start sshd number $((i + 1))"
            tsubame_fleet_stop "${dir}"
            return 1
        fi
    done

    version=$("${TSUBAME_FLEET_SSHD}" -V 2>&1 | sed -n 's/^OpenSSH_\([0-9]*\.[0-9]*\).*/\1/p' | head -n 1)
    export TSUBAME_TEST_SSH_HOST=127.0.0.1
    TSUBAME_TEST_SSH_PORTS=$(
        IFS=,
        echo "${ports[*]}"
    )
    export TSUBAME_TEST_SSH_PORTS
    export TSUBAME_TEST_SSH_USER="${TSUBAME_FLEET_USER}"
    export TSUBAME_TEST_SSH_NOSHELL_USER="${TSUBAME_FLEET_NOSHELL_USER}"
    export TSUBAME_TEST_SSH_PASSWORD="${password}"
    export TSUBAME_TEST_SSH_KEY_ED25519="${dir}/id_ed25519"
    export TSUBAME_TEST_SSH_KEY_ECDSA="${dir}/id_ecdsa"
    export TSUBAME_TEST_SSH_KEY_ED25519_PASSPHRASE="${dir}/id_ed25519_pass"
    export TSUBAME_TEST_SSH_KEY_PASSPHRASE
    TSUBAME_TEST_SSH_KEY_PASSPHRASE=$(cat "${dir}/passphrase")
    export TSUBAME_TEST_SSH_KEY_RSA="${dir}/id_rsa"
    export TSUBAME_TEST_SSH_DIR="${dir}"
    export TSUBAME_TEST_SSH_OPENSSH_VERSION="${version}"
    (
        umask 077
        for key in HOST PORTS USER NOSHELL_USER PASSWORD KEY_ED25519 KEY_ECDSA KEY_ED25519_PASSPHRASE \
            KEY_PASSPHRASE KEY_RSA DIR OPENSSH_VERSION; do
            key="TSUBAME_TEST_SSH_${key}"
            printf 'export %s=%q\n' "${key}" "${!key}"
        done >"${dir}/env"
    )
    tsubame_log "fleet: ${count} sshd on 127.0.0.1 ports ${TSUBAME_TEST_SSH_PORTS} (OpenSSH ${version}; variables in ${dir}/env)"
    echo "${TSUBAME_TEST_SSH_PORTS}"
}

tsubame_fleet_stop() {
    local dir pidfile pid
    dir=$(realpath -m "$1")
    [[ -d ${dir} ]] || return 0
    shopt -s nullglob
    for pidfile in "${dir}"/sshd-*.pid; do
        if ! tsubame_pid_alive "${pidfile}" sshd; then
            rm -f "${pidfile}"
            continue
        fi
        pid=$(head -n 1 "${pidfile}" | tr -dc '0-9')
        # The connections' sshd processes and what they run (jobs a test
        # left behind) outlive the listener: take them first.
        local -a tree=()
        mapfile -t tree < <(_tsubame_fleet_descendants "${pid}")
        kill -TERM "${pid}" 2>/dev/null || true
        if [[ ${#tree[@]} -gt 0 ]]; then
            kill -KILL "${tree[@]}" 2>/dev/null || true
        fi
        rm -f "${pidfile}"
    done
    shopt -u nullglob
    tsubame_log "fleet (${dir}): stopped"
}
