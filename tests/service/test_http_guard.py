"""Who may reach the HTTP API, and how hard guessing is: the Host header (DNS rebinding), an open API
on the network, the anonymous reviewer, weak tokens, failed logins and tokens locked out, logout
ended on the server, formula cells in exports, and numbers beyond 64 bits.

The review workbench's own app over a real audited workspace (``tests.service.test_review``), and
``labelqa serve`` / ``labelqa export`` as subprocesses where the command line is what is tested.
"""

from __future__ import annotations

import csv
import io
import logging
import subprocess

import pytest

from harness.commands import labelqa_cmd, labelqa_env
from service.http import safe_cell
from service.http.guard import allowed_hosts, open_api_problem, token_weakness
from service.http.ratelimit import FailureLimiter
from service.settings import load_settings
from tests.service.test_review import ADMIN, READER, Audited, _app, _bearer, _login, build_audited


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Audited:
    return build_audited(tmp_path_factory.mktemp("guard"))


@pytest.fixture
def audited(workspace, tmp_path) -> Audited:
    """A private copy (decisions change the database)."""
    return workspace.copy_to(tmp_path / "labelqa")


def test_host_header_other_than_ours_gets_400_on_every_route(audited):
    """DNS rebinding: a page elsewhere, re-pointed at 127.0.0.1, sends its own name as Host."""
    c, _, _ = _app(audited, users=False)
    evil = {"Host": "evil.example"}
    for path in ("/health", "/login", "/review", "/api/export.csv", "/api/worklist", "/jobs", "/static/review/x"):
        assert c.get(path, headers=evil, follow_redirects=False).status_code == 400, path
    assert c.post("/api/annotations/1.2.3/decision", json={"decision": "unsure"}, headers=evil).status_code == 400
    for host in ("127.0.0.1:8787", "localhost:8787", "localhost", "[::1]:8787"):
        assert c.get("/health", headers={"Host": host}).status_code == 200, host
    # the bound address and [api] allowed_hosts are answered too; a wildcard bind adds nothing by itself
    s = load_settings(None, {"api": {"host": "10.1.2.3", "allowed_hosts": ["qa.example.org", "*.lab.example"]}})
    assert allowed_hosts(s.api)[3:] == ["10.1.2.3", "qa.example.org", "*.lab.example"]
    assert allowed_hosts(load_settings(None, {"api": {"host": "0.0.0.0"}}).api) == ["localhost", "127.0.0.1",
                                                                                     "[::1]"]


def test_open_api_on_the_network_refuses_to_start_unless_wanted(tmp_path):
    cfg = tmp_path / "labelqa.toml"
    cfg.write_text(f'[store]\ndata_dir = "{tmp_path / "data"}"\n[listener]\nport = 0\n[api]\nhost = "0.0.0.0"\n')
    r = subprocess.run([*labelqa_cmd(), "serve", "--config", str(cfg)], capture_output=True, text=True,
                       env=labelqa_env(), timeout=120)
    assert r.returncode == 2 and "no [auth] users and no [api] token" in r.stderr and "allow_open" in r.stderr
    assert "listening on" not in r.stderr  # refused before anything was bound
    over = {"api": {"host": "0.0.0.0", "allow_open": True}}
    error, warning = open_api_problem(load_settings(None, over))
    assert error is None and warning and "allow_open" in warning
    for ok in ({"api": {"host": "127.0.0.1"}}, {"api": {"host": "0.0.0.0", "token": "Sk3t9Qw2Lz7Xc4Vb"}},
               {"api": {"host": "0.0.0.0", "enabled": False}}):
        assert open_api_problem(load_settings(None, ok)) == (None, None), ok


def test_anonymous_caller_is_a_reviewer_never_an_admin(audited):
    c, _, _ = _app(audited, users=False)
    item = c.get("/api/worklist", params={"verdict": "flagged"}).json()["items"][0]
    assert c.post(f"/api/annotations/{item['annotation_uid']}/decision",
                  json={"decision": "unsure"}).status_code == 200
    assert c.delete(f"/api/annotations/{item['annotation_uid']}/decision").status_code == 403
    assert c.get("/api/decisions/trail").status_code == 403
    assert c.post(f"/studies/{item['study_uid']}/audit").status_code == 403
    c.get("/login")  # the browser's anonymous session is a reviewer as well
    page = c.get("/review")
    assert page.status_code == 200
    assert c.get("/api/decisions/trail").status_code == 403


@pytest.mark.parametrize("token,why", [("password", "8 characters"), ("aaaaaaaaaaaaaaaaaaaa", "distinct"),
                                       ("abcdefghijk-2931", "in sequence"), ("x7-reader-Q2wLp9", "name")])
def test_weak_tokens_are_refused_at_start_with_the_reason(tmp_path, token, why):
    assert why in (token_weakness(token, "reader") or "")
    cfg = tmp_path / "labelqa.toml"
    cfg.write_text(f'[store]\ndata_dir = "{tmp_path / "data"}"\n[listener]\nport = 0\n'
                   f'[[auth.users]]\nname = "reader"\ntoken = "{token}"\n')
    r = subprocess.run([*labelqa_cmd(), "serve", "--config", str(cfg)], capture_output=True, text=True,
                       env=labelqa_env(), timeout=120)
    assert r.returncode == 2 and "user 'reader': the token" in r.stderr and why in r.stderr, r.stderr[-2000:]
    assert token not in r.stderr


def test_failed_logins_lock_out_the_client_and_the_user(audited, caplog):
    c, _, _ = _app(audited)
    caplog.set_level(logging.INFO, logger="labelqa")
    typed_token = "T0kenTypedAsName9"  # someone typed a token into the name field: never logged
    for i in range(5):
        r = c.post("/login", data={"name": READER[0] if i % 2 else typed_token, "token": "wrong-wrong-wrong"})
        assert r.status_code == 200 and "wrong name or token" in r.text
    r = c.post("/login", data={"name": READER[0], "token": READER[1]}, follow_redirects=False)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0  # even the right token, while locked
    lockouts = [m for m in caplog.messages if "locked out" in m]
    assert len(lockouts) == 1 and "client" in lockouts[0], lockouts  # one WARNING per lock-out
    assert [rec.levelno for rec in caplog.records if "locked out" in rec.getMessage()] == [logging.WARNING]
    assert typed_token not in caplog.text and "an unknown name" in caplog.text


def test_wrong_bearer_tokens_lock_out_the_client(audited, caplog):
    c, _, _ = _app(audited)
    caplog.set_level(logging.WARNING, logger="labelqa")
    for _ in range(5):
        assert c.get("/api/worklist", headers={"Authorization": "Bearer Zz9wrongWrong77x"}).status_code == 401
    r = c.get("/api/worklist", headers=_bearer(READER))
    assert r.status_code == 429 and "Retry-After" in r.headers
    assert sum("bearer token: client" in m and "locked out" in m for m in caplog.messages) == 1


def test_lockout_ends_and_success_clears_a_user():
    """The limiter with an injected clock: a window, a lock-out, its end, a success forgetting failures."""
    now = [0.0]
    lim = FailureLimiter(3, window_s=60, lockout_s=30, clock=lambda: now[0])
    keys = ["client 10.0.0.1", "user rita"]
    lim.fail(keys, "login")
    now[0] = 61.0  # the first failure left the window
    lim.fail(keys, "login")
    lim.fail(keys, "login")
    assert lim.retry_after(keys) is None
    assert lim.fail(keys, "login") is True and lim.retry_after(keys) == 30
    now[0] = 91.5
    assert lim.retry_after(keys) is None
    lim.fail(["user rita"], "login")
    lim.fail(["user rita"], "login")
    lim.succeed(["user rita"])
    assert lim.fail(["user rita"], "login") is False


def test_logout_ends_the_session_on_the_server(audited):
    c, _, _ = _app(audited)
    csrf = _login(c, READER)
    from service.http.auth import SESSION_COOKIE

    kept = c.cookies.get(SESSION_COOKIE)
    assert c.get("/api/worklist").status_code == 200
    r = c.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    c.cookies.set(SESSION_COOKIE, kept)  # a copy kept from before the logout
    assert c.get("/api/worklist").status_code == 401
    r = c.get("/review", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_formula_cells_are_neutralised_in_both_exports(audited):
    c, _, _ = _app(audited)
    items = c.get("/api/worklist", params={"verdict": "any"}, headers=_bearer(READER)).json()["items"]
    comments = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1:A2)", "\tcmd", "\rcmd"]
    for it, comment in zip(items, comments, strict=False):
        r = c.post(f"/api/annotations/{it['annotation_uid']}/decision", headers=_bearer(READER),
                   json={"decision": "unsure", "comment": comment, "item_id": it["id"]})
        assert r.status_code == 200, r.text
    api_rows = list(csv.DictReader(io.StringIO(c.get("/api/export.csv", headers=_bearer(READER)).text)))
    cfg = audited.data_dir.parent / "labelqa.toml"
    cfg.write_text(f'[store]\ndata_dir = "{audited.data_dir}"\n')
    p = subprocess.run([*labelqa_cmd(), "export", "--config", str(cfg)], capture_output=True, text=True,
                       env=labelqa_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    cli_rows = list(csv.DictReader(io.StringIO(p.stdout)))
    stored = sorted(r["comment"] for r in c.get("/api/export.json", headers=_bearer(READER)).json()["rows"])
    assert set(comments[:4]) <= set(stored)  # the JSON export carries the values as they are
    for rows in (api_rows, cli_rows):
        assert sorted(r["comment"] for r in rows) == sorted(safe_cell(v) for v in stored)
        assert {"'" + x for x in comments[:4]} <= {r["comment"] for r in rows}
        cells = [v for r in rows for v in r.values()]
        assert not [v for v in cells if v and v[0] in "=+-@\t\r"], "no cell a spreadsheet runs as a formula"
    assert [safe_cell(v) for v in ("\tx", "\rx", "x=1", 3, None, "")] == ["'\tx", "'\rx", "x=1", 3, None, ""]


def test_numbers_beyond_64_bits_give_422_not_500(audited):
    c, _, _ = _app(audited)
    h = _bearer(ADMIN)
    big = str(2**70)
    for path in (f"/api/items/{big}", f"/api/items/{big}/mask.png", f"/api/decisions/trail?item_id={big}",
                 f"/api/items/{2**63}/image.png"):
        assert c.get(path, headers=h).status_code == 422, path
    import base64
    import json

    for cursor in ([1.0, 2**70], [1.0, -1], ["inf", 3]):
        token = base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode().rstrip("=")
        assert c.get("/api/worklist", params={"cursor": token}, headers=h).status_code == 422, cursor
    item = c.get("/api/worklist", headers=h).json()["items"][0]
    r = c.post(f"/api/annotations/{item['annotation_uid']}/decision", headers=h,
               json={"decision": "unsure", "item_id": 2**70})
    assert r.status_code == 422
    assert c.get(f"/api/items/{2**63 - 1}", headers=h).status_code == 404  # the largest id: simply not there
