# SPDX-License-Identifier: Apache-2.0
"""Servers (SSH targets): CRUD, write-only credentials, search, pagination, conflicts."""
from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import MISSING, Client, assert_problem, error_fields, job_body, parse_time, server_body, unique

SERVER_FIELDS = {
    "id", "name", "host", "port", "username", "auth_method", "description", "tags", "host_key",
    "has_password", "has_private_key", "has_passphrase", "max_concurrent", "created_at", "updated_at",
}
SECRET_KEYS = {"password", "private_key", "passphrase"}


def assert_server_shape(s: dict[str, Any]) -> None:
    assert SERVER_FIELDS <= set(s), f"missing: {SERVER_FIELDS - set(s)}"
    assert not (SECRET_KEYS & set(s)), f"write-only fields returned: {SECRET_KEYS & set(s)}"
    assert isinstance(s["id"], int) and s["id"] >= 1
    assert s["auth_method"] in ("password", "key")
    assert isinstance(s["tags"], list)
    for k in ("has_password", "has_private_key", "has_passphrase"):
        assert isinstance(s[k], bool)
    for k in ("created_at", "updated_at"):
        assert s[k].endswith("Z"), f"{k} not UTC: {s[k]}"
        parse_time(s[k])


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, "a write-only credential appeared in a response"


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """An ed25519 private key (OpenSSH format) protected by a passphrase, made for this run."""
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed")
    path = Path(tmp_path_factory.mktemp("key")) / "id_ed25519"
    passphrase = "pp-" + uuid.uuid4().hex
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "tsubame-test", "-f", str(path)],
                   check=True)
    return path.read_text(), passphrase


def test_create_with_password(admin_token: Client) -> None:
    body = server_body(description="web box", tags=["web", "prod"])
    r = admin_token.post("/api/v1/servers", json=body)
    assert r.status_code == 201, r.text
    assert_no_secret(r.text, body["password"])
    s = r.json()
    try:
        assert_server_shape(s)
        assert s["name"] == body["name"] and s["host"] == "127.0.0.1" and s["port"] == 22
        assert s["username"] == "tsubame" and s["auth_method"] == "password"
        assert s["description"] == "web box" and sorted(s["tags"]) == ["prod", "web"]
        assert s["host_key"] is None
        assert (s["has_password"], s["has_private_key"], s["has_passphrase"]) == (True, False, False)

        r = admin_token.get(f"/api/v1/servers/{s['id']}")
        assert r.status_code == 200
        assert_no_secret(r.text, body["password"])
        assert r.json() == s
        r = admin_token.get("/api/v1/servers", params={"limit": 200})
        assert_no_secret(r.text, body["password"])
        for item in r.json()["items"]:
            assert_server_shape(item)
    finally:
        admin_token.delete(f"/api/v1/servers/{s['id']}")


def test_defaults(make_server: Callable[..., dict]) -> None:
    s = make_server()
    assert s["port"] == 22 and s["description"] == "" and s["tags"] == [] and s["host_key"] is None


def test_create_with_key_and_passphrase(admin_token: Client, ssh_key: tuple[str, str]) -> None:
    key, passphrase = ssh_key
    body = server_body(auth_method="key", password=MISSING, private_key=key, passphrase=passphrase, port=2222)
    r = admin_token.post("/api/v1/servers", json=body)
    assert r.status_code == 201, r.text
    s = r.json()
    try:
        key_body = "".join(key.strip().splitlines()[1:-1])  # the base64 between the armour lines
        assert_no_secret(r.text, passphrase, key_body[:40], key_body[-40:])
        assert_server_shape(s)
        assert s["auth_method"] == "key" and s["port"] == 2222
        assert (s["has_password"], s["has_private_key"], s["has_passphrase"]) == (False, True, True)
        r = admin_token.get(f"/api/v1/servers/{s['id']}")
        assert_no_secret(r.text, passphrase, key_body[:40])
    finally:
        admin_token.delete(f"/api/v1/servers/{s['id']}")


@pytest.mark.parametrize("overrides, field", [
    ({"auth_method": "password", "password": None}, "password"),
    ({"auth_method": "key", "password": None}, "private_key"),
    ({"port": 0}, "port"),
    ({"port": 65536}, "port"),
    ({"name": ""}, "name"),
    ({"name": "n" * 101}, "name"),
    ({"host": ""}, "host"),
    ({"username": ""}, "username"),
    ({"auth_method": "telnet"}, "auth_method"),
    ({"tags": ["has space"]}, "tags"),
    ({"tags": [f"t{i}" for i in range(21)]}, "tags"),
    ({"description": "d" * 2001}, "description"),
])
def test_invalid_server_is_422(admin_token: Client, overrides: dict, field: str) -> None:
    body = server_body(**overrides)
    body = {k: v for k, v in body.items() if v is not None}
    p = assert_problem(admin_token.post("/api/v1/servers", json=body), 422)
    fields = error_fields(p)
    assert any(f == field or f.startswith(field + "[") or f.startswith(field + ".") for f in fields), p


def test_duplicate_name_is_409(admin_token: Client, make_server) -> None:
    s = make_server()
    assert_problem(admin_token.post("/api/v1/servers", json=server_body(name=s["name"])), 409)
    other = make_server()
    assert_problem(admin_token.patch(f"/api/v1/servers/{other['id']}", json={"name": s["name"]}), 409)


def test_patch_is_partial_and_keeps_credentials(admin_token: Client, make_server) -> None:
    s = make_server(description="before", tags=["a"])
    r = admin_token.patch(f"/api/v1/servers/{s['id']}", json={"description": "after"})
    assert r.status_code == 200, r.text
    p = r.json()
    assert_server_shape(p)
    assert p["description"] == "after"
    for k in ("name", "host", "port", "username", "auth_method", "tags", "has_password", "created_at"):
        assert p[k] == s[k], k
    assert parse_time(p["updated_at"]) >= parse_time(s["updated_at"])
    new_password = "new-secret-" + uuid.uuid4().hex
    r = admin_token.patch(f"/api/v1/servers/{s['id']}", json={"password": new_password, "port": 2200, "tags": []})
    assert r.status_code == 200, r.text
    assert_no_secret(r.text, new_password)
    assert r.json()["port"] == 2200 and r.json()["tags"] == [] and r.json()["has_password"] is True


def test_patch_host_key_null_by_admin(admin: Client, admin_token: Client, make_server) -> None:
    s = make_server()
    r = admin.patch(f"/api/v1/servers/{s['id']}", json={"host_key": None})
    assert r.status_code == 200, r.text
    assert r.json()["host_key"] is None
    # only null may be written
    bad = {"algorithm": "ssh-ed25519", "fingerprint_sha256": "SHA256:abc", "trusted_at": "2026-01-01T00:00:00Z"}
    assert_problem(admin_token.patch(f"/api/v1/servers/{s['id']}", json={"host_key": bad}), 422)
    assert_problem(admin_token.patch(f"/api/v1/servers/{s['id']}", json={"host_key": "SHA256:abc"}), 422)


def test_search_by_tag_and_q(admin_token: Client, make_server) -> None:
    mark = uuid.uuid4().hex[:10]
    tag = f"tag-{mark}"
    a = make_server(name=f"alpha-{mark}", tags=[tag, "common"])
    b = make_server(name=f"beta-{mark}", tags=[tag])
    c = make_server(name=f"gamma-{mark}", tags=["other"])
    d = make_server(name=unique("unrelated"), tags=[tag + "x"])

    ids = {s["id"] for s in admin_token.list_all("/api/v1/servers", {"tag": tag})}
    assert ids == {a["id"], b["id"]}, "tag filter must match whole tags only"

    ids = {s["id"] for s in admin_token.list_all("/api/v1/servers", {"q": mark})}
    assert {a["id"], b["id"], c["id"]} <= ids
    ids = {s["id"] for s in admin_token.list_all("/api/v1/servers", {"q": f"beta-{mark}"})}
    assert ids == {b["id"]}
    ids = {s["id"] for s in admin_token.list_all("/api/v1/servers", {"tag": tag, "q": "alpha"})}
    assert ids == {a["id"]}
    assert admin_token.list_all("/api/v1/servers", {"q": "no-such-" + mark}) == []
    # characters that mean something to SQL LIKE are taken literally
    assert admin_token.list_all("/api/v1/servers", {"q": "%" + mark}) == []
    assert admin_token.list_all("/api/v1/servers", {"q": "alpha_" + mark}) == []
    assert d["id"] not in {s["id"] for s in admin_token.list_all("/api/v1/servers", {"tag": tag})}


def test_keyset_pagination(admin_token: Client, make_server) -> None:
    tag = unique("page")
    made = {make_server(tags=[tag])["id"] for _ in range(7)}
    seen: list[int] = []
    params: dict[str, Any] = {"tag": tag, "limit": 3}
    pages = 0
    while True:
        pages += 1
        assert pages <= 4, "pagination over 7 items with limit 3 must end within 4 pages"
        r = admin_token.get("/api/v1/servers", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 3
        seen.extend(s["id"] for s in page["items"])
        if page["next_cursor"] is None:
            break
        assert isinstance(page["next_cursor"], str) and page["next_cursor"]
        params["cursor"] = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 7, f"duplicates or gaps: {seen}"
    assert set(seen) == made
    first = admin_token.ok("GET", "/api/v1/servers", params={"tag": tag, "limit": 3})
    assert len(first["items"]) == 3 and first["next_cursor"] is not None
    everything = admin_token.ok("GET", "/api/v1/servers", params={"tag": tag, "limit": 7})
    assert {s["id"] for s in everything["items"]} == made
    assert admin_token.ok("GET", "/api/v1/servers", params={"tag": tag, "limit": 200})["next_cursor"] is None


def test_pagination_is_stable_under_inserts(admin_token: Client, make_server) -> None:
    tag = unique("stable")
    made = {make_server(tags=[tag])["id"] for _ in range(4)}
    page = admin_token.ok("GET", "/api/v1/servers", params={"tag": tag, "limit": 2})
    made.add(make_server(tags=[tag])["id"])  # a new one while paging
    seen = [s["id"] for s in page["items"]]
    cursor = page["next_cursor"]
    while cursor:
        page = admin_token.ok("GET", "/api/v1/servers", params={"tag": tag, "limit": 2, "cursor": cursor})
        seen.extend(s["id"] for s in page["items"])
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)), f"an item was repeated: {seen}"
    assert made - set(seen) <= {max(made)}, "an item that existed before paging began was skipped"


def test_delete_server_used_by_a_job_is_409(admin_token: Client, make_server) -> None:
    s = make_server()
    job = admin_token.ok("POST", "/api/v1/jobs", json=job_body([s["id"]]))
    try:
        assert_problem(admin_token.delete(f"/api/v1/servers/{s['id']}"), 409)
        assert admin_token.get(f"/api/v1/servers/{s['id']}").status_code == 200
    finally:
        assert admin_token.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert admin_token.delete(f"/api/v1/servers/{s['id']}").status_code == 204
    assert_problem(admin_token.get(f"/api/v1/servers/{s['id']}"), 404)
    assert_problem(admin_token.delete(f"/api/v1/servers/{s['id']}"), 404)
    assert_problem(admin_token.patch(f"/api/v1/servers/{s['id']}", json={"description": "x"}), 404)


def test_missing_server_is_404(admin_token: Client) -> None:
    assert_problem(admin_token.get("/api/v1/servers/9223372036854775807"), 404)
