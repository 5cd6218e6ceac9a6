# shellcheck shell=bash
# tsubame-ci: helpers sourced by scripts/start, scripts/stop, scripts/test and
# scripts/pg. Not meant to be executed. Every function prints progress on
# stderr, so that functions which print a value (tsubame_free_port) can be
# used in $(...).
#
# Running as root (CI does): PostgreSQL refuses to run as root, so its
# commands run as the `postgres` system user; the FastCGI pool drops to the
# `tsubame` user and nginx runs its workers as `tsubame` too, so the socket,
# the master key and the web root must be reachable by that user.

# Absolute path of the checkout (this file is scripts/lib/common.sh).
TSUBAME_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TSUBAME_PG_BIN="/usr/lib/postgresql/15/bin"
TSUBAME_SWIFT_BIN="/opt/swift/usr/bin"
TSUBAME_RUN_USER="tsubame"
TSUBAME_PACKAGES=(
    libfcgi-dev libpq-dev libssh2-1-dev libssl-dev libcurl4-openssl-dev pkg-config
    postgresql nginx spawn-fcgi wrk
    openssh-server openssh-client curl ca-certificates python3-pip
)

# The Swift toolchain lives outside the default PATH on these machines.
if ! command -v swift >/dev/null 2>&1 && [[ -x "${TSUBAME_SWIFT_BIN}/swift" ]]; then
    PATH="${PATH}:${TSUBAME_SWIFT_BIN}"
    export PATH
fi

tsubame_log() {
    printf '==> %s\n' "$*" >&2
}

tsubame_warn() {
    printf 'warning: %s\n' "$*" >&2
}

tsubame_error() {
    printf 'error: %s\n' "$*" >&2
}

tsubame_die() {
    tsubame_error "$*"
    exit 1
}

tsubame_is_root() {
    [[ ${EUID} -eq 0 ]]
}

# tsubame_as USER CMD...: run CMD as USER when we are root, else as ourselves.
# `cd /` first: the target user usually cannot read root's working directory.
tsubame_as() {
    local user=$1
    shift
    if tsubame_is_root; then
        (cd / && runuser -u "${user}" -- "$@")
    else
        "$@"
    fi
}

# tsubame_ensure_packages: install the Debian packages the project needs,
# only those missing; `apt-get update` only when something is missing.
tsubame_ensure_packages() {
    local pkg missing=()
    for pkg in "${TSUBAME_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("${pkg}")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    if ! tsubame_is_root; then
        tsubame_die "missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})"
    fi
    tsubame_log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# tsubame_ensure_user: when root, create the system user and group `tsubame`
# that the pool and the nginx workers run as.
tsubame_ensure_user() {
    tsubame_is_root || return 0
    if id -u "${TSUBAME_RUN_USER}" >/dev/null 2>&1; then
        return 0
    fi
    tsubame_log "creating system user ${TSUBAME_RUN_USER}"
    local group_opt=(--user-group)
    if getent group "${TSUBAME_RUN_USER}" >/dev/null; then
        group_opt=(--gid "${TSUBAME_RUN_USER}")
    fi
    useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "${group_opt[@]}" "${TSUBAME_RUN_USER}"
}

# tsubame_free_port: print a TCP port on 127.0.0.1 that is free right now.
tsubame_free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# tsubame_check_traversable USER PATH: succeed when USER can reach PATH (a
# directory); otherwise name the first directory on the way that USER cannot
# traverse. Only meaningful as root.
tsubame_check_traversable() {
    local user=$1 target
    target=$(realpath -m "$2")
    tsubame_is_root || return 0
    if runuser -u "${user}" -- test -x "${target}" 2>/dev/null; then
        return 0
    fi
    local part current="" blocked="${target}"
    local -a parts
    IFS='/' read -r -a parts <<<"${target#/}"
    for part in "${parts[@]}"; do
        current="${current}/${part}"
        if ! runuser -u "${user}" -- test -x "${current}" 2>/dev/null; then
            blocked="${current}"
            break
        fi
    done
    tsubame_error "user '${user}' cannot traverse directory ${blocked} (needed to reach ${target})." \
        "Allow it (chmod o+x ${blocked}) or use a location that this user can reach."
    return 1
}

# tsubame_pid_alive PIDFILE [NAME]: succeed when PIDFILE names a live process
# (whose command name contains NAME, if given, to survive pid reuse).
tsubame_pid_alive() {
    local pidfile=$1 name=${2:-} pid
    [[ -s ${pidfile} ]] || return 1
    pid=$(head -n 1 "${pidfile}" 2>/dev/null | tr -dc '0-9')
    [[ -n ${pid} ]] || return 1
    kill -0 "${pid}" 2>/dev/null || return 1
    if [[ -n ${name} ]]; then
        tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -q -- "${name}" || return 1
    fi
    return 0
}

# tsubame_stop_pidfile PIDFILE LABEL [TIMEOUT] [NAME]: SIGTERM the process,
# wait up to TIMEOUT seconds (default 30), then SIGKILL. Reports what it did.
tsubame_stop_pidfile() {
    local pidfile=$1 label=$2 timeout=${3:-30} name=${4:-} pid waited=0
    if ! tsubame_pid_alive "${pidfile}" "${name}"; then
        tsubame_log "${label}: not running"
        rm -f "${pidfile}" 2>/dev/null || true
        return 0
    fi
    pid=$(head -n 1 "${pidfile}" | tr -dc '0-9')
    kill -TERM "${pid}" 2>/dev/null || true
    while kill -0 "${pid}" 2>/dev/null; do
        if ((waited >= timeout * 10)); then
            tsubame_warn "${label} (pid ${pid}) did not stop within ${timeout}s; sending SIGKILL"
            # Its children (pool workers, nginx workers) by parent pid, taken
            # before the parent dies and they are re-parented.
            local -a children=()
            mapfile -t children < <(pgrep -P "${pid}" || true)
            kill -KILL "${pid}" "${children[@]}" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "${pidfile}" 2>/dev/null || true
    tsubame_log "${label}: stopped (pid ${pid})"
}

# tsubame_pg_running DIR: succeed when the cluster in DIR is running.
tsubame_pg_running() {
    local dir
    dir=$(realpath -m "$1")
    [[ -f ${dir}/PG_VERSION ]] || return 1
    tsubame_as postgres "${TSUBAME_PG_BIN}/pg_ctl" -D "${dir}" status >/dev/null 2>&1
}

# tsubame_pg_start DIR PORT: create (once) and start a private PostgreSQL 15
# cluster in DIR listening on 127.0.0.1:PORT, superuser `postgres`, trust
# authentication for the unix socket in DIR and 127.0.0.1 only. With
# TSUBAME_PG_FAST=1 durability is traded for speed (tests only). Tests only:
# TSUBAME_PG_EXTRA_ADDRESS=A.B.C.D also listens on (and trusts clients from)
# that local address and TSUBAME_PG_EXTRA_CLIENT=A.B.C.D (scripts/chaos: a
# network namespace's veth pair).
tsubame_pg_start() {
    local dir port=$2
    dir=$(realpath -m "$1")
    [[ -x ${TSUBAME_PG_BIN}/initdb ]] || tsubame_die "PostgreSQL 15 not found in ${TSUBAME_PG_BIN} (Debian package postgresql)"
    [[ ${port} =~ ^[0-9]+$ ]] || tsubame_die "tsubame_pg_start: bad port '${port}'"

    mkdir -p "${dir}"
    if tsubame_is_root; then
        chown postgres:postgres "${dir}"
        tsubame_check_traversable postgres "${dir}" || return 1
    fi
    chmod 0700 "${dir}"

    if tsubame_pg_running "${dir}"; then
        tsubame_log "PostgreSQL in ${dir}: already running"
        return 0
    fi

    if [[ ! -f ${dir}/PG_VERSION ]]; then
        tsubame_log "PostgreSQL: initialising a private cluster in ${dir}"
        local initdb_log
        initdb_log=$(mktemp)
        if ! tsubame_as postgres "${TSUBAME_PG_BIN}/initdb" -D "${dir}" -U postgres \
            --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"${initdb_log}" 2>&1; then
            cat "${initdb_log}" >&2
            rm -f "${initdb_log}"
            tsubame_error "initdb failed (output above)"
            return 1
        fi
        rm -f "${initdb_log}"
        # Only the local socket and IPv4 loopback, no replication entries.
        cat >"${dir}/pg_hba.conf" <<'EOF'
# tsubame-ci private cluster: trust, loopback only.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
EOF
        # Settings that may change between starts live in tsubame.conf,
        # rewritten on each start.
        printf "\n# tsubame-ci\ninclude_if_exists 'tsubame.conf'\n" >>"${dir}/postgresql.conf"
    fi

    # The unix socket path must fit in sockaddr_un (108 bytes); a very deep
    # directory gets TCP only (everything here connects over TCP anyway).
    local socket_dir="${dir}"
    if ((${#dir} > 90)); then
        tsubame_warn "PostgreSQL: ${dir} is too long for a unix socket path; TCP only"
        socket_dir=""
    fi
    {
        echo "# Written by scripts/lib/common.sh on each start; do not edit."
        echo "listen_addresses = '127.0.0.1${TSUBAME_PG_EXTRA_ADDRESS:+,${TSUBAME_PG_EXTRA_ADDRESS}}'"
        echo "port = ${port}"
        echo "unix_socket_directories = '${socket_dir//\'/\'\'}'"
        echo "max_connections = 200"
        if [[ ${TSUBAME_PG_FAST:-0} == 1 ]]; then
            # Tests only: a crash of the machine may lose the data.
            echo "fsync = off"
            echo "synchronous_commit = off"
            echo "full_page_writes = off"
        fi
    } >"${dir}/tsubame.conf"
    local extra
    for extra in ${TSUBAME_PG_EXTRA_ADDRESS:-} ${TSUBAME_PG_EXTRA_CLIENT:-}; do
        [[ ${extra} =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || tsubame_die "tsubame_pg_start: bad address '${extra}'"
        if ! grep -q "^host all all ${extra}/32 trust$" "${dir}/pg_hba.conf"; then
            echo "host all all ${extra}/32 trust" >>"${dir}/pg_hba.conf"
        fi
    done
    if tsubame_is_root; then
        chown postgres:postgres "${dir}/pg_hba.conf" "${dir}/tsubame.conf"
    fi

    tsubame_log "PostgreSQL: starting on 127.0.0.1:${port} (data in ${dir})"
    if ! tsubame_as postgres "${TSUBAME_PG_BIN}/pg_ctl" -D "${dir}" -l "${dir}/postgres.log" \
        -w -t 60 start >/dev/null; then
        tail -n 20 "${dir}/postgres.log" >&2 || true
        tsubame_error "PostgreSQL did not start (log: ${dir}/postgres.log)"
        return 1
    fi
}

# tsubame_pg_stop DIR: stop the private cluster in DIR if it runs.
tsubame_pg_stop() {
    local dir
    dir=$(realpath -m "$1")
    if ! tsubame_pg_running "${dir}"; then
        tsubame_log "PostgreSQL (${dir}): not running"
        return 0
    fi
    if tsubame_as postgres "${TSUBAME_PG_BIN}/pg_ctl" -D "${dir}" -m fast -w -t 60 stop >/dev/null; then
        tsubame_log "PostgreSQL (${dir}): stopped"
    else
        tsubame_error "PostgreSQL (${dir}) did not stop"
        return 1
    fi
}

# tsubame_pg_createdb DIR PORT NAME: create database NAME (if missing) in the
# cluster listening on 127.0.0.1:PORT, as superuser postgres over TCP. DIR is
# the cluster's directory (checked to be running).
tsubame_pg_createdb() {
    local dir=$1 port=$2 name=$3 exists
    [[ ${name} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || tsubame_die "tsubame_pg_createdb: bad database name '${name}'"
    if [[ -n ${dir} ]] && ! tsubame_pg_running "${dir}"; then
        tsubame_die "tsubame_pg_createdb: no PostgreSQL running in ${dir}"
    fi
    exists=$("${TSUBAME_PG_BIN}/psql" -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${port}" \
        -U postgres -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '${name}'")
    if [[ ${exists} == 1 ]]; then
        return 0
    fi
    tsubame_log "PostgreSQL: creating database ${name}"
    "${TSUBAME_PG_BIN}/createdb" -h 127.0.0.1 -p "${port}" -U postgres "${name}"
}

# Escape a string for the replacement side of a sed s|...|...| command.
_tsubame_sed_escape() {
    printf '%s' "$1" | sed -e 's/[|&\\]/\\&/g'
}

# tsubame_nginx_render DIR PORT SOCKET WEBROOT USER_LINE: write DIR/nginx.conf.
tsubame_nginx_render() {
    local dir=$1 port=$2 socket=$3 webroot=$4 user_line=$5 value
    for value in "${dir}" "${socket}" "${webroot}" "${TSUBAME_ROOT}"; do
        # These end up inside double-quoted nginx strings, some of which
        # expand variables.
        if [[ ${value} == *[\"\$\\]* || ${value} == *$'\n'* ]]; then
            tsubame_die "path not usable in nginx.conf (contains \", \$, \\ or a newline): ${value}"
        fi
    done
    sed -e "s|@PREFIX@|$(_tsubame_sed_escape "${dir}")|g" \
        -e "s|@LISTEN@|127.0.0.1:${port}|g" \
        -e "s|@WEBROOT@|$(_tsubame_sed_escape "${webroot}")|g" \
        -e "s|@SOCKET@|$(_tsubame_sed_escape "${socket}")|g" \
        -e "s|@SNIPPETS@|$(_tsubame_sed_escape "${TSUBAME_ROOT}/nginx/snippets")|g" \
        -e "s|@USER_LINE@|$(_tsubame_sed_escape "${user_line}")|g" \
        "${TSUBAME_ROOT}/nginx/tsubame.conf.template" >"${dir}/nginx.conf.new"
    if grep -q '@[A-Z_]*@' "${dir}/nginx.conf.new"; then
        tsubame_die "unreplaced placeholder in ${dir}/nginx.conf.new"
    fi
    mv "${dir}/nginx.conf.new" "${dir}/nginx.conf"
}

# tsubame_nginx_start DIR PORT SOCKET WEBROOT: render the configuration into
# DIR and start nginx on 127.0.0.1:PORT serving WEBROOT and passing /api/ and
# /metrics to the FastCGI pool on SOCKET. Idempotent.
tsubame_nginx_start() {
    local dir port=$2 socket webroot user_line
    dir=$(realpath -m "$1")
    socket=$(realpath -m "$3")
    webroot=$(realpath -m "$4")
    [[ ${port} =~ ^[0-9]+$ ]] || tsubame_die "tsubame_nginx_start: bad port '${port}'"
    mkdir -p "${dir}/tmp"

    if tsubame_pid_alive "${dir}/nginx.pid" nginx; then
        tsubame_log "nginx (${dir}): already running"
        return 0
    fi

    user_line="# not started as root: the workers run as the invoking user"
    if tsubame_is_root; then
        # Without a user line, root's nginx runs its workers as `nobody`,
        # who cannot reach the pool's socket (mode 0660, user tsubame).
        tsubame_ensure_user
        user_line="user ${TSUBAME_RUN_USER} ${TSUBAME_RUN_USER};"
        chmod 0755 "${dir}"
        # The workers create temp files under DIR/tmp.
        tsubame_check_traversable "${TSUBAME_RUN_USER}" "${dir}" || return 1
        if ! runuser -u "${TSUBAME_RUN_USER}" -- test -r "${webroot}/index.html" 2>/dev/null; then
            tsubame_log "nginx: ${TSUBAME_RUN_USER} cannot read ${webroot}; serving a copy from ${dir}/www"
            rm -rf "${dir}/www"
            cp -R "${webroot}" "${dir}/www"
            chmod -R a+rX "${dir}/www"
            webroot="${dir}/www"
        fi
        if ! runuser -u "${TSUBAME_RUN_USER}" -- test -x "$(dirname "${socket}")" 2>/dev/null; then
            tsubame_warn "nginx: ${TSUBAME_RUN_USER} cannot reach $(dirname "${socket}"); /api/ will answer 503"
        fi
    fi

    tsubame_nginx_render "${dir}" "${port}" "${socket}" "${webroot}" "${user_line}"
    # -e: the error log before the configuration is read (the default one
    # under /var/log/nginx may not be writable).
    if ! nginx -q -t -e "${dir}/error.log" -p "${dir}/" -c "${dir}/nginx.conf"; then
        tsubame_error "nginx rejected ${dir}/nginx.conf"
        return 1
    fi
    tsubame_log "nginx: starting on http://127.0.0.1:${port}/"
    if ! nginx -e "${dir}/error.log" -p "${dir}/" -c "${dir}/nginx.conf"; then
        tail -n 20 "${dir}/error.log" >&2 || true
        tsubame_error "nginx did not start (log: ${dir}/error.log)"
        return 1
    fi
}

# tsubame_nginx_stop DIR: stop the nginx whose pid file is DIR/nginx.pid.
tsubame_nginx_stop() {
    local dir
    dir=$(realpath -m "$1")
    tsubame_stop_pidfile "${dir}/nginx.pid" "nginx (${dir})" 15 nginx
}

# tsubame_wait_http URL SECONDS [STATUS_REGEX]: poll URL with curl until it
# answers with a status matching STATUS_REGEX (default: any HTTP status).
tsubame_wait_http() {
    local url=$1 seconds=$2 want=${3:-[1-5][0-9][0-9]} code="000"
    local deadline=$((SECONDS + seconds))
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${url}" 2>/dev/null) || true
        if [[ ${code} =~ ^(${want})$ ]]; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            tsubame_error "${url} did not answer ${want} within ${seconds}s (last status: ${code:-none})"
            return 1
        fi
        sleep 0.2
    done
}

# tsubame_pool_start BIN LOGFILE: start the pool master BIN in the background
# with the environment the caller exported (TSUBAME_FCGI_SOCKET,
# TSUBAME_POOL_PIDFILE, ...); wait until its socket exists. With
# TSUBAME_DETACH=1 the master gets its own session (scripts/start), so it
# outlives the terminal.
tsubame_pool_start() {
    local bin=$1 log=$2 socket=${TSUBAME_FCGI_SOCKET:?} pidfile=${TSUBAME_POOL_PIDFILE:?} pid waited=0
    if tsubame_pid_alive "${pidfile}" tsubame-pool; then
        tsubame_log "pool: already running (pid $(head -n 1 "${pidfile}"))"
        return 0
    fi
    # A socket left behind by a pool that died cannot be bound again.
    rm -f "${socket}" "${pidfile}"
    tsubame_log "pool: starting ${bin}"
    if [[ ${TSUBAME_DETACH:-0} == 1 ]]; then
        setsid nohup "${bin}" >>"${log}" 2>&1 </dev/null &
    else
        "${bin}" >>"${log}" 2>&1 </dev/null &
    fi
    pid=$!
    while [[ ! -S ${socket} ]]; do
        if ! kill -0 "${pid}" 2>/dev/null && ! tsubame_pid_alive "${pidfile}" tsubame-pool; then
            tail -n 20 "${log}" >&2 || true
            tsubame_error "pool exited during start-up (log: ${log})"
            return 1
        fi
        if ((waited >= 300)); then
            tail -n 20 "${log}" >&2 || true
            tsubame_error "pool did not create ${socket} within 30s (log: ${log})"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    # The master writes its own pid file; fall back to the pid we know.
    if [[ ! -s ${pidfile} ]]; then
        echo "${pid}" >"${pidfile}"
    fi
}

# tsubame_executor_start BIN LOG: start tsubame-executor in the background
# (as the run user when root; setpriv execs, so the pid is the executor's own)
# and write its pid to TSUBAME_EXECUTOR_PIDFILE. Idempotent.
tsubame_executor_start() {
    local bin=$1 log=$2 pidfile=${TSUBAME_EXECUTOR_PIDFILE:?} pid
    if tsubame_pid_alive "${pidfile}" tsubame-executor; then
        tsubame_log "executor: already running (pid $(head -n 1 "${pidfile}"))"
        return 0
    fi
    rm -f "${pidfile}"
    local -a cmd=("${bin}")
    if tsubame_is_root; then
        tsubame_ensure_user
        cmd=(setpriv "--reuid=${TSUBAME_RUN_USER}" "--regid=${TSUBAME_RUN_USER}" --init-groups -- "${bin}")
    fi
    tsubame_log "executor: starting ${bin}"
    if [[ ${TSUBAME_DETACH:-0} == 1 ]]; then
        setsid nohup "${cmd[@]}" >>"${log}" 2>&1 </dev/null &
    else
        "${cmd[@]}" >>"${log}" 2>&1 </dev/null &
    fi
    pid=$!
    echo "${pid}" >"${pidfile}"
    sleep 0.5
    if ! kill -0 "${pid}" 2>/dev/null; then
        tail -n 20 "${log}" >&2 || true
        tsubame_error "executor exited during start-up (log: ${log})"
        return 1
    fi
}

# tsubame_print_help FILE: print the leading comment block of FILE (the
# script's usage text) without the shebang and the `# ` prefixes.
tsubame_print_help() {
    sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "$1"
}
