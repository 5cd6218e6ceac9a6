# shellcheck shell=bash
# tsubame-ci: the throw-away test stack of scripts/test and scripts/chaos.
# Sourced after scripts/lib/common.sh and scripts/lib/fleet.sh; not meant to
# be executed. The calling script sets `set -euo pipefail`, installs
# `trap tsubame_stack_cleanup EXIT` and calls, in this order:
#
#   tsubame_stack_pip                 the Python test requirements (Tests/http)
#   tsubame_stack_workdir PREFIX      WORK=/tmp/PREFIX.XXXXXX with run/, log/,
#                                     profraw/ (PROFILE_PATTERN: the
#                                     instrumented binaries' coverage output)
#   tsubame_stack_binaries BUILD_BIN  BIN: BUILD_BIN, or copies in WORK/bin
#                                     when the run user cannot reach it
#   tsubame_stack_settings DB         ports, paths and the exported TSUBAME_*
#                                     settings of a stack on database DB
#                                     (the caller may change the exported
#                                     values afterwards, before the start)
#   tsubame_stack_pg DB...            a private PostgreSQL (no fsync) in
#                                     WORK/pg with these databases
#   tsubame_stack_start               master key, migration, user admin
#                                     (ADMIN_PASSWORD), pool and nginx
#   tsubame_stack_fleet N             N loopback sshd (scripts/lib/fleet.sh);
#                                     SSH_ENV holds their TSUBAME_TEST_SSH_*
#   tsubame_stack_test_env            TEST_ENV: what the pytest suites read
#   tsubame_stack_stop_services       nginx, the executor and the pool (they
#                                     write their coverage when they exit)
#   tsubame_stack_cleanup             all of it, then WORK is removed (kept
#                                     with TSUBAME_KEEP_TEST_DIR=1)
#
# Each returns non-zero on failure and leaves what it started for the cleanup.

WORK=""
BIN=""
PROFILE_PATTERN=""
ADMIN_PASSWORD=""
SSH_ENV=()
TEST_ENV=()
# Commands the cleanup runs first (a script's own additions), in order.
TSUBAME_STACK_CLEANUP_HOOKS=()

tsubame_stack_pip() {
    tsubame_log "installing the Python test requirements"
    # The machine's python3 may be Debian's (externally managed: pip needs the
    # break-system-packages switch) or a private one; the variables are ignored
    # where they do not apply.
    local req
    for req in "$@"; do
        [[ -f ${req} ]] || continue
        PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
            python3 -m pip install -q --disable-pip-version-check -r "${req}" || return 1
    done
}

tsubame_stack_workdir() {
    WORK=$(mktemp -d "/tmp/$1.XXXXXX") || return 1
    # postgres and tsubame must traverse it to reach their own subdirectories.
    chmod 0711 "${WORK}"
    mkdir -p "${WORK}/run" "${WORK}/log" "${WORK}/profraw"
    # Coverage only counts raw profiles written after this point.
    touch "${WORK}/started"
    if tsubame_is_root; then
        chown "${TSUBAME_RUN_USER}:${TSUBAME_RUN_USER}" "${WORK}/run" "${WORK}/profraw"
        chmod 0750 "${WORK}/run"
    fi
    # Instrumented binaries (the pool, its workers, the CLI, the executors)
    # write their coverage here instead of into the current directory.
    PROFILE_PATTERN="${WORK}/profraw/%p-%m.profraw"
}

tsubame_stack_binaries() {
    local build_bin=$1
    # The pool drops to tsubame before it runs the worker binary; when the
    # checkout is out of that user's reach, run copies of the binaries instead.
    BIN="${build_bin}"
    if tsubame_is_root && ! runuser -u "${TSUBAME_RUN_USER}" -- test -x "${build_bin}/tsubame-worker" 2>/dev/null; then
        tsubame_log "${TSUBAME_RUN_USER} cannot reach ${build_bin}; running copies from ${WORK}/bin"
        mkdir -p "${WORK}/bin"
        cp "${build_bin}/tsubame" "${build_bin}/tsubame-pool" "${build_bin}/tsubame-worker" \
            "${build_bin}/tsubame-executor" "${WORK}/bin/" || return 1
        chmod 0755 "${WORK}/bin" "${WORK}/bin/"*
        BIN="${WORK}/bin"
    fi
}

tsubame_stack_settings() {
    local db=$1
    PG_PORT=$(tsubame_free_port)
    DB_URL="postgresql://postgres@127.0.0.1:${PG_PORT}/${db}"
    KEY_FILE="${WORK}/master.key"
    SOCKET="${WORK}/run/fcgi.sock"
    POOL_PIDFILE="${WORK}/run/pool.pid"
    HTTP_PORT=$(tsubame_free_port)
    BASE_URL="http://127.0.0.1:${HTTP_PORT}"
    SMTP_PORT=$(tsubame_free_port)

    # Settings for everything below (docs/internals.md); the pool, the CLI and
    # the executors the tests start read them from the environment.
    export TSUBAME_DATABASE_URL="${DB_URL}"
    export TSUBAME_MASTER_KEY_FILE="${KEY_FILE}"
    export TSUBAME_FCGI_SOCKET="${SOCKET}"
    export TSUBAME_FCGI_SOCKET_MODE=0660
    export TSUBAME_POOL_WORKERS=2
    export TSUBAME_WORKER_THREADS=4
    export TSUBAME_MAX_REQUESTS=500
    export TSUBAME_POOL_PIDFILE="${POOL_PIDFILE}"
    export TSUBAME_COOKIE_SECURE=false
    # The executor is not part of the standing stack: the tests that run jobs
    # start it themselves, against the loopback SSH fleet only.
    # A short lease so the lost-executor tests wait seconds, not half a minute.
    export TSUBAME_EXECUTOR_PIDFILE="${WORK}/run/executor.pid"
    export TSUBAME_LEASE_SECONDS=6
    export TSUBAME_POLL_INTERVAL_MS=500
    export TSUBAME_SSH_CONNECT_TIMEOUT_SECONDS=5
    # Notifications: e-mail goes to a local SMTP sink that Tests/http/test_14_notify.py starts on this port
    # (aiosmtpd; nothing listens there otherwise, so a send is refused); links point at the test nginx; the
    # first retry comes after 1 s.
    export TSUBAME_SMTP_URL="smtp://127.0.0.1:${SMTP_PORT}"
    export TSUBAME_PUBLIC_URL="${BASE_URL}"
    export TSUBAME_NOTIFY_RETRY_SECONDS=1
    if tsubame_is_root; then
        export TSUBAME_POOL_USER="${TSUBAME_RUN_USER}"
        export TSUBAME_FCGI_SOCKET_GROUP="${TSUBAME_RUN_USER}"
    fi
    unset TSUBAME_CONFIG_FILE
}

tsubame_stack_pg() {
    local db
    TSUBAME_PG_FAST=1 tsubame_pg_start "${WORK}/pg" "${PG_PORT}" || return 1
    for db in "$@"; do
        tsubame_pg_createdb "${WORK}/pg" "${PG_PORT}" "${db}" || return 1
    done
}

tsubame_stack_start() {
    (umask 077 && LLVM_PROFILE_FILE="${PROFILE_PATTERN}" "${BIN}/tsubame" keygen --file "${KEY_FILE}") || return 1
    if tsubame_is_root; then
        chown "${TSUBAME_RUN_USER}:${TSUBAME_RUN_USER}" "${KEY_FILE}"
    fi
    tsubame_log "migrating the database"
    LLVM_PROFILE_FILE="${PROFILE_PATTERN}" "${BIN}/tsubame" migrate || return 1
    local output
    output=$(LLVM_PROFILE_FILE="${PROFILE_PATTERN}" "${BIN}/tsubame" user create --username admin --role admin) || {
        printf '%s\n' "${output}" >&2
        return 1
    }
    ADMIN_PASSWORD=$(sed -n 's/^password: //p' <<<"${output}" | head -n 1)
    if [[ -z ${ADMIN_PASSWORD} ]]; then
        tsubame_error "'tsubame user create' printed no 'password: ' line"
        return 1
    fi
    if ! LLVM_PROFILE_FILE="${PROFILE_PATTERN}" tsubame_pool_start "${BIN}/tsubame-pool" "${WORK}/log/pool.log" \
        || ! tsubame_nginx_start "${WORK}/nginx" "${HTTP_PORT}" "${SOCKET}" "${TSUBAME_ROOT}/web" \
        || ! tsubame_wait_http "${BASE_URL}/api/health" 60 200; then
        tail -n 20 "${WORK}/log/pool.log" "${WORK}/nginx/error.log" >&2 2>/dev/null || true
        return 1
    fi
}

tsubame_stack_fleet() {
    local name
    SSH_ENV=()
    tsubame_fleet_start "${WORK}/fleet" "$1" >/dev/null || return 1
    for name in $(compgen -v TSUBAME_TEST_SSH_); do
        SSH_ENV+=("${name}=${!name}")
    done
}

# shellcheck disable=SC2034 # read by the calling script
tsubame_stack_test_env() {
    TEST_ENV=(
        "${SSH_ENV[@]}"
        "TSUBAME_TEST_BASE_URL=${BASE_URL}"
        "TSUBAME_TEST_ADMIN_USER=admin"
        "TSUBAME_TEST_ADMIN_PASSWORD=${ADMIN_PASSWORD}"
        "TSUBAME_TEST_DATABASE_URL=${DB_URL}"
        "TSUBAME_TEST_POOL_PIDFILE=${POOL_PIDFILE}"
        "TSUBAME_TEST_EXECUTOR_PIDFILE=${TSUBAME_EXECUTOR_PIDFILE}"
        "TSUBAME_TEST_EXECUTOR_LOG=${WORK}/log/executor.log"
        "TSUBAME_TEST_PROFILE_PATTERN=${PROFILE_PATTERN}"
        "TSUBAME_TEST_BIN_DIR=${BIN}"
        "TSUBAME_TEST_PG_DIR=${WORK}/pg"
        "TSUBAME_TEST_PG_PORT=${PG_PORT}"
        "TSUBAME_TEST_PG_SCRIPT=${TSUBAME_ROOT}/scripts/pg"
        "TSUBAME_TEST_WORK_DIR=${WORK}"
        "TSUBAME_TEST_MASTER_KEY_FILE=${KEY_FILE}"
        "TSUBAME_TEST_FCGI_SOCKET=${SOCKET}"
        "TSUBAME_TEST_SMTP_PORT=${SMTP_PORT}"
    )
}

tsubame_stack_stop_services() {
    [[ -n ${WORK} ]] || return 0
    tsubame_nginx_stop "${WORK}/nginx"
    tsubame_stop_pidfile "${WORK}/run/executor.pid" "executor" 20 tsubame-executor
    tsubame_stop_pidfile "${WORK}/run/pool.pid" "pool" 40 tsubame-pool
}

# The EXIT trap: keeps the exit status.
tsubame_stack_cleanup() {
    local rc=$? hook
    set +e
    for hook in "${TSUBAME_STACK_CLEANUP_HOOKS[@]}"; do
        "${hook}"
    done
    if [[ -n ${WORK} && -d ${WORK} ]]; then
        tsubame_log "cleaning up ${WORK}"
        tsubame_stack_stop_services
        tsubame_pg_stop "${WORK}/pg"
        tsubame_fleet_stop "${WORK}/fleet"
        if [[ ${TSUBAME_KEEP_TEST_DIR:-0} == 1 ]]; then
            tsubame_log "kept ${WORK}"
        else
            rm -rf "${WORK}"
        fi
    fi
    exit "${rc}"
}
