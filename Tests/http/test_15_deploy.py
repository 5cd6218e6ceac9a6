# SPDX-License-Identifier: Apache-2.0
"""The files for an installed tsubame-ci: systemd units, the settings example,
the nginx site file and the operations guide.

These need no running stack (marked no_stack, so they also run when
TSUBAME_TEST_BASE_URL is unset). A test whose tool is missing (systemd-analyze,
nginx) is skipped. When scripts/test runs them, the nginx site file also
serves through the live stack's socket (TSUBAME_TEST_FCGI_SOCKET) and the
settings example is checked against `tsubame config-dump` (TSUBAME_TEST_BIN_DIR).
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

pytestmark = pytest.mark.no_stack

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "scripts" / "systemd").glob("*.service"))
ENV_EXAMPLE = REPO / "scripts" / "systemd" / "tsubame.env.example"
SITE = REPO / "nginx" / "tsubame.site.conf"
TEMPLATE = REPO / "nginx" / "tsubame.conf.template"
SNIPPETS = REPO / "nginx" / "snippets"
CONFIG_SWIFT = REPO / "Sources" / "TsubameCore" / "Config.swift"
OPERATIONS = REPO / "docs" / "operations.md"
INSTALLED_BIN = "/usr/local/bin/"


def _tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if not path:
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture()
def scratch() -> Iterator[Path]:
    """A temporary directory that other users (nginx's workers) can traverse."""
    path = Path(tempfile.mkdtemp(prefix="tsubame-deploy.", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- systemd units


def test_units_exist() -> None:
    assert [u.name for u in UNITS] == ["tsubame-executor.service", "tsubame-pool.service"]


def _units_with_stub_binaries(scratch: Path) -> list[Path]:
    """Copies of the units whose /usr/local/bin/ programs are stub executables in scratch."""
    bin_dir = scratch / "bin"
    bin_dir.mkdir()
    out = []
    for unit in UNITS:
        text = unit.read_text()
        for name in set(re.findall(re.escape(INSTALLED_BIN) + r"([\w.-]+)", text)):
            stub = bin_dir / name
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        copy = scratch / unit.name
        copy.write_text(text.replace(INSTALLED_BIN, f"{bin_dir}/"))
        out.append(copy)
    return out


def test_units_pass_systemd_analyze_verify(scratch: Path) -> None:
    tool = _tool("systemd-analyze")
    units = _units_with_stub_binaries(scratch)
    r = subprocess.run([tool, "verify", "--man=no", *map(str, units)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys and unparsable values: any output is a finding.
    output = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and output == "", output


def test_units_security_exposure_stays_low(scratch: Path) -> None:
    tool = _tool("systemd-analyze")
    for unit in _units_with_stub_binaries(scratch):
        r = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(unit)],
                           capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
        if not m:
            pytest.skip(f"systemd-analyze security --offline gave no score: {(r.stdout + r.stderr)[-300:]}")
        # 1.5 (executor) and 1.7 (pool) when written; 10 is an unhardened service.
        assert float(m.group(1)) <= 2.0, f"{unit.name}: exposure {m.group(1)}\n{r.stdout}"


def _service_lines(unit: Path) -> list[str]:
    return [line.strip() for line in unit.read_text().splitlines()]


def test_every_hardening_line_has_a_comment() -> None:
    for unit in UNITS:
        lines = _service_lines(unit)
        start = lines.index("# --- Hardening. Each line says why it can be set. ---")
        end = lines.index("[Install]")
        previous = ""
        for line in lines[start + 1:end]:
            if line and not line.startswith("#"):
                key = line.split("=", 1)[0]
                # A comment right above, or the same key continued (SystemCallFilter= twice).
                assert previous.startswith("#") or previous.split("=", 1)[0] == key, \
                    f"{unit.name}: no comment above {line!r}"
            if line:
                previous = line


def _directives(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in _service_lines(unit):
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_units_run_unprivileged_with_the_settings_and_credentials() -> None:
    for unit in UNITS:
        d = _directives(unit)
        assert d["User"] == ["tsubame"] and d["Group"] == ["tsubame"], unit.name
        assert d["Restart"] == ["on-failure"], unit.name
        assert d["CapabilityBoundingSet"] == [""], unit.name
        env = d["Environment"]
        assert "TSUBAME_CONFIG_FILE=/etc/tsubame/tsubame.env" in env, unit.name
        # The database URL arrives as a credential, read through the *_FILE convention.
        assert d["LoadCredential"] == ["database-url:/etc/tsubame/database-url"], unit.name
        assert "TSUBAME_DATABASE_URL_FILE=%d/database-url" in env, unit.name
        # EnvironmentFile= would override the Environment= lines above.
        assert "EnvironmentFile" not in d, unit.name


def test_pool_unit_socket_reload_and_migrations() -> None:
    d = _directives(REPO / "scripts" / "systemd" / "tsubame-pool.service")
    assert d["ExecStart"] == [INSTALLED_BIN + "tsubame-pool"]
    assert d["ExecStartPre"] == [INSTALLED_BIN + "tsubame migrate"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # The socket's default path, /run/tsubame/fcgi.sock, is inside the RuntimeDirectory.
    assert d["RuntimeDirectory"] == ["tsubame"]
    assert "TSUBAME_FCGI_SOCKET_GROUP=www-data" in d["Environment"]
    assert d["SupplementaryGroups"] == ["www-data"]
    assert "unix:/run/tsubame/fcgi.sock;" in SITE.read_text()


def test_executor_unit_does_not_migrate() -> None:
    d = _directives(REPO / "scripts" / "systemd" / "tsubame-executor.service")
    assert d["ExecStart"] == [INSTALLED_BIN + "tsubame-executor"]
    assert "ExecStartPre" not in d
    assert "RuntimeDirectory" not in d


# --------------------------------------------------------------------------- settings example


def _config_options() -> dict[str, bool]:
    """Every setting of Config.swift, mapped to whether it is a secret."""
    text = CONFIG_SWIFT.read_text()
    options = {}
    for block in re.findall(r"\.init\(name: (\"TSUBAME_[A-Z0-9_]+\".*?)help:", text, re.S):
        name = re.match(r"\"(TSUBAME_[A-Z0-9_]+)\"", block).group(1)
        options[name] = "secret: true" in block
    assert len(options) > 20, "Config.swift's option table was not found"
    return options


def _example_assignments() -> list[tuple[str, str, bool]]:
    """(name, value, commented) for each TSUBAME_X=... line of the example."""
    out = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^(#?)(TSUBAME_[A-Z0-9_]+)=(.*)$", line)
        if m:
            out.append((m.group(2), m.group(3), m.group(1) == "#"))
    return out


def test_env_example_lists_every_setting_and_no_other() -> None:
    options = _config_options()
    named = {name for name, _, _ in _example_assignments()}
    missing = set(options) - named
    assert not missing, f"settings missing from {ENV_EXAMPLE.name}: {sorted(missing)}"
    known = set(options) | {name + "_FILE" for name, secret in options.items() if secret}
    unknown = named - known
    assert not unknown, f"not settings of tsubame-ci: {sorted(unknown)}"


def _bin(name: str) -> Path:
    bin_dir = os.environ.get("TSUBAME_TEST_BIN_DIR", "")
    path = Path(bin_dir) / name
    if not bin_dir or not os.access(path, os.X_OK):
        pytest.skip("TSUBAME_TEST_BIN_DIR is not set (run through scripts/test)")
    return path


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSUBAME_")}
    env.update(extra)
    return env


def test_env_example_defaults_are_the_real_defaults() -> None:
    tsubame = _bin("tsubame")
    r = subprocess.run([str(tsubame), "config-dump"], capture_output=True, text=True, timeout=30, env=_clean_env())
    assert r.returncode == 0, r.stderr
    defaults = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    for name, value, commented in _example_assignments():
        if commented and defaults.get(name, "(unset)") not in ("(unset)", "(redacted)"):
            assert value == defaults[name], f"{ENV_EXAMPLE.name}: {name}={value}, but the default is {defaults[name]}"


def test_env_example_values_are_accepted(scratch: Path) -> None:
    tsubame = _bin("tsubame")
    url_file = scratch / "database-url"
    url_file.write_text("postgresql:///tsubame\n")
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = re.sub(r"^#(TSUBAME_[A-Z0-9_]+=)", r"\1", line)
        line = line.replace("/etc/tsubame/database-url", str(url_file))
        lines.append(line)
    config = scratch / "tsubame.env"
    config.write_text("\n".join(lines) + "\n")
    r = subprocess.run([str(tsubame), "config-dump"], capture_output=True, text=True, timeout=30,
                       env=_clean_env(TSUBAME_CONFIG_FILE=str(config)))
    assert r.returncode == 0, r.stderr
    assert "TSUBAME_FCGI_SOCKET=/run/tsubame/fcgi.sock" in r.stdout


# --------------------------------------------------------------------------- nginx site file


def _strip_comment(line: str) -> str:
    """The line without its # comment (a # inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def _braces(line: str) -> int:
    depth, quote = 0, None
    for ch in line:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
    return depth


def _server_block(text: str) -> list[str]:
    """The directives of the (only uncommented) server block, one per line, normalised."""
    lines = [_strip_comment(line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    start = lines.index("server {")
    depth, body = 0, []
    for line in lines[start:]:
        depth += _braces(line)
        body.append(line)
        if depth == 0:
            break
    site_only = ("listen", "server_name", "root", "access_log", "error_log", "server_tokens",
                 "client_max_body_size", "client_body_buffer_size", "ssl_")
    out = []
    for line in body[1:-1]:
        if line.startswith(site_only):
            continue
        line = re.sub(r'include "?(?:@SNIPPETS@|/etc/nginx/snippets/tsubame)/([\w.-]+)"?;', r"include SNIPPETS/\1;", line)
        line = re.sub(r"fastcgi_pass (?:unix:@SOCKET@|tsubame_pool);", "fastcgi_pass POOL;", line)
        out.append(line)
    return out


def test_site_matches_the_development_template() -> None:
    site, template = _server_block(SITE.read_text()), _server_block(TEMPLATE.read_text())
    assert site == template, (
        "nginx/tsubame.site.conf's server block differs from nginx/tsubame.conf.template's "
        "(apart from listen, names, paths and logs): keep them in step")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _render(scratch: Path, socket_path: str, port: int, ipv6: bool) -> Path:
    web = scratch / "web"
    shutil.copytree(REPO / "web", web)
    for path in [web, *web.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    text = SITE.read_text()
    text = text.replace("/etc/nginx/snippets/tsubame/", f"{SNIPPETS}/")
    text = text.replace("/usr/local/share/tsubame/web", str(web))
    text = text.replace("unix:/run/tsubame/fcgi.sock;", f"unix:{socket_path};")
    text = text.replace("/var/log/nginx/", f"{scratch}/")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{port};")
    text = text.replace("listen [::]:80;", f"listen [::1]:{port};" if ipv6 else "")
    site = scratch / "tsubame.site.conf"
    site.write_text(text)
    assert not re.search(r"^\s*[^#\n]*(/run/tsubame|/usr/local|/etc/nginx/snippets|/var/log)", text, re.M), \
        "a packaged path was not replaced"

    user_line = "# not root: the workers run as the invoking user"
    if os.geteuid() == 0:
        # The test stack's socket is group tsubame, mode 0660 (scripts/test).
        user_line = "user tsubame tsubame;" if _user_exists("tsubame") else "user nobody nogroup;"
    conf = scratch / "nginx.conf"
    conf.write_text(f"""{user_line}
worker_processes 1;
daemon off;
pid {scratch}/nginx.pid;
error_log {scratch}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {scratch}/tmp-client;
    fastcgi_temp_path {scratch}/tmp-fastcgi;
    proxy_temp_path {scratch}/tmp-proxy;
    uwsgi_temp_path {scratch}/tmp-uwsgi;
    scgi_temp_path {scratch}/tmp-scgi;
    include {site};
}}
""")
    return conf


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_site_passes_nginx_t(scratch: Path) -> None:
    nginx = _tool("nginx")
    conf = _render(scratch, str(scratch / "fcgi.sock"), _free_port(), ipv6=True)
    r = subprocess.run([nginx, "-t", "-q", "-e", str(scratch / "error.log"), "-p", f"{scratch}/", "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr + (scratch / "error.log").read_text(errors="replace")


def _security_headers() -> dict[str, str]:
    text = (SNIPPETS / "security-headers.conf").read_text()
    return dict(re.findall(r'^add_header ([\w-]+) "([^"]*)" always;', text, re.M))


def _status_of_oversized_post(port: int) -> tuple[int, str]:
    """nginx refuses a body over 2 MiB from its Content-Length alone, before reading it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 3000000\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status = int(head.split(" ", 2)[1])
    ctype = re.search(r"(?im)^content-type: *([^\r\n;]+)", head)
    return status, ctype.group(1) if ctype else ""


def test_site_serves_the_ui_and_the_api(scratch: Path) -> None:
    nginx = _tool("nginx")
    stack_socket = os.environ.get("TSUBAME_TEST_FCGI_SOCKET", "")
    live = bool(stack_socket) and Path(stack_socket).is_socket()
    port = _free_port()
    conf = _render(scratch, stack_socket if live else str(scratch / "no-pool.sock"), port, ipv6=False)
    log = (scratch / "nginx.out").open("wb")
    proc = subprocess.Popen([nginx, "-e", str(scratch / "error.log"), "-p", f"{scratch}/", "-c", str(conf)],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("nginx did not start: " + (scratch / "error.log").read_text(errors="replace")[-2000:])
                time.sleep(0.1)

        headers = _security_headers()
        assert "Content-Security-Policy" in headers
        for path in ("/", "/js/main.js"):
            r = requests.get(base + path, timeout=10)
            assert r.status_code == 200, path
            assert r.headers["Cache-Control"] == "no-cache", path
            for name, value in headers.items():
                assert r.headers.get(name) == value, f"{path}: {name}"
        assert requests.get(base + "/.git/config", timeout=10).status_code == 404
        assert _status_of_oversized_post(port) == (413, "application/problem+json")

        health = requests.get(base + "/api/health", timeout=10)
        metrics = requests.get(base + "/metrics", timeout=10)
        for r in (health, metrics):
            assert r.headers.get("Content-Security-Policy") == headers["Content-Security-Policy"]
        if live:
            assert health.status_code == 200, health.text
            assert health.json()["status"] == "ok"
            assert metrics.status_code == 200 and "tsubame_up 1" in metrics.text
        else:
            # No pool behind the socket: nginx's own problem+json, for the API and metrics alike.
            for r in (health, metrics):
                assert r.status_code == 503
                assert r.headers["Content-Type"].startswith("application/problem+json")
                assert r.headers["Retry-After"] == "5"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


# --------------------------------------------------------------------------- operations guide


def _invocations(text: str, program: str) -> list[str]:
    """The first argument of each call of `program` in the guide's code blocks and code spans.

    A call is a command word (after any VAR=value assignments) whose name is
    `program`, at the start of a line, of a code span, or after && ; | (.
    """
    code = re.findall(r"```(?:sh)?\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
    found = []
    for block in code:
        for part in re.split(r"\n|&&|;|\||\(", block):
            words = part.split()
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                words.pop(0)
            if len(words) >= 2 and words[0].rsplit("/", 1)[-1] == program:
                found.append(words[1])
    return found


def test_operations_guide_names_only_commands_that_exist() -> None:
    text = OPERATIONS.read_text()
    usage = (REPO / "Sources" / "TsubameHTTP" / "Commands.swift").read_text()
    commands = set(re.findall(r"^ {10}([a-z][a-z-]+)(?: |$)", usage, re.M))
    assert {"migrate", "user", "keygen", "check-config", "config-dump", "schema-status"} <= commands
    used = _invocations(text, "tsubame")
    assert {"migrate", "user", "keygen", "check-config"} <= set(used), used
    unknown = sorted(set(used) - commands)
    assert not unknown, f"docs/operations.md uses tsubame commands that do not exist: {unknown}"
    assert set(_invocations(text, "tsubame-pool")) <= {"status", "--test-config"}
    assert set(_invocations(text, "tsubame-executor")) <= {"--test-config", "--help"}


def test_readme_links_the_operations_guide() -> None:
    assert "(docs/operations.md)" in (REPO / "README.md").read_text()
