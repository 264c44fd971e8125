"""Failed-login limits, token revocation and worker-token lifetimes, on real parts: a node pool
on loopback gRPC (real Redis, real users.db), the master on a real uvicorn server, and HTTP
clients whose sockets are bound to distinct loopback addresses (127.0.0.1 and 127.0.0.2), so
that the master sees two real client addresses."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2
import pytest

from hivemind import auth, keys, tuning
from hivemind.auth import issue_worker_token
from hivemind.client import Client, forwarding_metadata
from hivemind.config import Settings
from hivemind.errors import NodePoolError
from hivemind.proto import hivemind_pb2 as pb
from hivemind.userdb import UserStore
from hivemind.worker.connection import WorkerConnection
from tests.helpers import REPO_ROOT, wait_until
from tests.master_support import Console, console_for, password_of, serving
from tests.nodepool_support import Pool

RESOURCES = pb.WorkerResources(cpu=2, memory_mb=1024, capacity=1)


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    with console_for(settings) as c:
        yield c


@pytest.fixture
def master_url(console: Console) -> Iterator[str]:
    with serving(console.app) as url:
        yield url


def http_from(source: str, base_url: str) -> httpx2.Client:
    """An HTTP client whose connections come from ``source`` (any 127.x is loopback)."""
    transport = httpx2.HTTPTransport(local_address=source)
    return httpx2.Client(base_url=base_url, transport=transport, timeout=30)


def login(http: httpx2.Client, username: str, password: str) -> httpx2.Response:
    return http.post("/api/auth/login", json={"username": username, "password": password})


def grpc_login(address: str, username: str, password: str, **kw: object) -> str:
    """``ok``, or the gRPC status name of the refusal."""
    with Client(address) as anonymous:
        try:
            anonymous.login(username, password, **kw)  # type: ignore[arg-type]
        except NodePoolError as exc:
            return exc.code
    return "ok"


def claims_of(token: str) -> dict[str, object]:
    body = token.partition(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def cli(settings: Settings, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m hivemind ...` as an operator runs it on the node pool's host."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    base.update(
        HIVEMIND_HOME=str(settings.home),
        HIVEMIND_NODEPOOL_ADDRESS=settings.client_address,
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        PYTHONPATH=str(REPO_ROOT),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "hivemind", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


# -- failed logins -----------------------------------------------------------------------------
def test_wrong_admin_passwords_from_one_address_do_not_lock_admin_out_elsewhere(
    console: Console, master_url: str
) -> None:
    console.add_user("root", admin=True)
    attacker, admin = http_from("127.0.0.2", master_url), http_from("127.0.0.1", master_url)
    replies = [login(attacker, "root", f"guess-{i}") for i in range(6)]
    codes = [r.status_code for r in replies]
    assert codes == [401] * 5 + [429], codes
    throttled = replies[-1]
    assert "too many failed logins for 'root' from this address" in throttled.json()["error"]
    assert int(throttled.headers["retry-after"]) >= 1
    # Even the right password waits at the attacker's address ...
    assert login(attacker, "root", password_of("root")).status_code == 429
    # ... but not at the real admin's.
    reply = login(admin, "root", password_of("root"))
    assert reply.status_code == 200, reply.text
    me = admin.get("/api/me", headers={"authorization": f"Bearer {reply.json()['token']}"})
    assert me.json()["username"] == "root"


def test_the_wait_doubles_with_each_further_failure(console: Console, master_url: str) -> None:
    console.add_user("alice")
    http = http_from("127.0.0.2", master_url)
    for i in range(tuning.LOGIN_USER_FAILURES_FREE):
        assert login(http, "alice", f"nope-{i}").status_code == 401
    first = login(http, "alice", "nope")
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    time.sleep(tuning.LOGIN_BACKOFF_FIRST + 0.1)
    assert login(http, "alice", "still-wrong").status_code == 401
    second = login(http, "alice", "nope")
    assert second.status_code == 429 and second.headers["retry-after"] == "2"


def test_spraying_usernames_from_one_address_is_throttled(
    console: Console, master_url: str
) -> None:
    console.add_user("alice")
    address = console.settings.client_address  # straight to the node pool, from 127.0.0.1
    codes = [grpc_login(address, f"user{i}", "Winter2024!") for i in range(60)]
    assert "RESOURCE_EXHAUSTED" in codes
    first = codes.index("RESOURCE_EXHAUSTED")
    assert first == tuning.LOGIN_ADDRESS_FAILURES_FREE, codes
    assert set(codes[:first]) == {"UNAUTHENTICATED"}
    with Client(address) as c, pytest.raises(NodePoolError) as info:
        c.login("alice", password_of("alice"))  # the right password waits too, here
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert "too many failed logins from this address; retry in" in str(info.value)
    # The master forwards its clients' addresses: 127.0.0.1 is throttled through it as well,
    # 127.0.0.2 is not.
    throttled = login(http_from("127.0.0.1", master_url), "alice", password_of("alice"))
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    assert "from this address" in throttled.json()["error"]
    clean = login(http_from("127.0.0.2", master_url), "alice", password_of("alice"))
    assert clean.status_code == 200, clean.text


def test_a_forwarded_address_counts_only_with_the_masters_service_token(pool: Pool) -> None:
    pool.user("alice")
    user_token = pool.user("bob").token
    for i in range(tuning.LOGIN_ADDRESS_FAILURES_FREE):
        assert grpc_login(pool.address, f"u{i}", "x") == "UNAUTHENTICATED"
    # A direct caller cannot pose as another address: not bare, not with a user's token, not
    # with a forged one. Its own address (127.0.0.1) is what counts, and it must wait.
    for metadata in (
        [(auth.FORWARDED_FOR_METADATA, "10.1.2.3")],
        forwarding_metadata(user_token, "10.1.2.3"),
        forwarding_metadata("forged.token", "10.1.2.3"),
    ):
        code = grpc_login(pool.address, "alice", "alice-password", metadata=metadata)
        assert code == "RESOURCE_EXHAUSTED", metadata
    service, _ = pool.server.state.signer.issue("master", "service", "service", 60)
    vouched = forwarding_metadata(service, "10.1.2.3")
    assert grpc_login(pool.address, "alice", "alice-password", metadata=vouched) == "ok"


def test_failures_from_many_addresses_only_slow_a_user_down(pool: Pool) -> None:
    pool.user("alice")
    service, _ = pool.server.state.signer.issue("master", "service", "service", 60)
    failures = tuning.LOGIN_SLOWDOWN_AFTER + 5
    per_address = tuning.LOGIN_USER_FAILURES_FREE
    for i in range(failures):
        metadata = forwarding_metadata(service, f"10.0.{i // per_address}.1")
        assert grpc_login(pool.address, "alice", "guess", metadata=metadata) == "UNAUTHENTICATED"
    started = time.monotonic()
    clean = forwarding_metadata(service, "10.9.9.9")
    assert grpc_login(pool.address, "alice", "alice-password", metadata=clean) == "ok"
    assert time.monotonic() - started < tuning.LOGIN_SLOWDOWN_MAX + 1.0
    # The success reset the user's count: no slowdown any more.
    assert pool.server.state.redis.get(keys.login_failures_key("alice")) is None


def test_a_success_does_not_reset_a_spraying_address(pool: Pool) -> None:
    pool.user("mallory")
    for i in range(tuning.LOGIN_ADDRESS_FAILURES_FREE - 1):
        assert grpc_login(pool.address, f"victim{i}", "x") == "UNAUTHENTICATED"
    assert grpc_login(pool.address, "mallory", "mallory-password") == "ok"  # their own account
    assert grpc_login(pool.address, "victim-last", "x") == "UNAUTHENTICATED"
    assert grpc_login(pool.address, "victim-next", "x") == "RESOURCE_EXHAUSTED"


# -- user tokens ---------------------------------------------------------------------------
def test_a_password_change_revokes_older_tokens_over_grpc(pool: Pool) -> None:
    alice = pool.user("alice")
    older, _ = pool.server.state.signer.issue("alice", "user", "user", 600)  # another of hers
    other = Client(pool.address, older)
    assert other.whoami().username == "alice"
    with pytest.raises(NodePoolError) as info:
        alice.set_password("alice", "new-password-1")  # her own, without the old one
    assert info.value.code == "INVALID_ARGUMENT" and "current password" in str(info.value)
    with pytest.raises(NodePoolError) as info:
        alice.change_password("wrong-old", "new-password-1")
    assert info.value.code == "PERMISSION_DENIED" and "current password is wrong" in str(info.value)
    old = alice.token
    reply = alice.change_password("alice-password", "new-password-1")
    assert reply.token != old and alice.whoami().username == "alice"
    for token in (old, other.token):  # refused at once by the node pool that changed it
        with Client(pool.address, token) as stale, pytest.raises(NodePoolError) as info:
            stale.whoami()
        assert info.value.code == "UNAUTHENTICATED"
        assert "revoked by a password change" in str(info.value)
    assert grpc_login(pool.address, "alice", "alice-password") == "UNAUTHENTICATED"
    assert grpc_login(pool.address, "alice", "new-password-1") == "ok"
    # SetPassword on oneself works with the current password too.
    alice.set_password("alice", "new-password-2", old_password="new-password-1")
    with pytest.raises(NodePoolError, match="revoked by a password change"):
        alice.whoami()


def test_an_admin_reset_needs_no_old_password_and_revokes_the_users_tokens(pool: Pool) -> None:
    admin, bob = pool.user("root", admin=True), pool.user("bob")
    assert admin.set_password("bob", "bob-new-password").username == "bob"
    with pytest.raises(NodePoolError, match="revoked by a password change"):
        bob.list()
    with pytest.raises(NodePoolError) as info:
        admin.set_password("root", "root-new-password")  # an admin's own needs the old one
    assert info.value.code == "INVALID_ARGUMENT"
    assert admin.whoami().username == "root"


def test_a_change_by_another_process_shows_within_the_recheck_window(pool: Pool) -> None:
    alice = pool.user("alice")
    assert alice.whoami().username == "alice"
    other_process = UserStore(pool.server.state.users.path)  # as `hivemind user passwd` does
    try:
        other_process.set_password("alice", "changed-elsewhere")
    finally:
        other_process.close()
    changed = time.monotonic()

    def refused() -> bool:
        try:
            alice.whoami()
        except NodePoolError as exc:
            assert "revoked by a password change" in str(exc)
            return True
        return False

    assert wait_until(refused, timeout=tuning.USER_TOKEN_RECHECK + 2, interval=0.02)
    assert time.monotonic() - changed <= tuning.USER_TOKEN_RECHECK + 0.5


def test_a_password_change_revokes_older_tokens_over_rest(console: Console) -> None:
    api = console.api("alice")
    old = api.headers["authorization"]
    missing = api.post("/api/me/password", json={"new_password": "alice-new-pass"})
    assert missing.status_code == 400
    wrong = api.post(
        "/api/me/password", json={"old_password": "nope", "new_password": "alice-new-pass"}
    )
    assert wrong.status_code == 403 and "current password is wrong" in wrong.json()["error"]
    changed = api.post(
        "/api/me/password",
        json={"old_password": password_of("alice"), "new_password": "alice-new-pass"},
    )
    assert changed.status_code == 200, changed.text
    stale = api.get("/api/me")
    assert stale.status_code == 401 and "revoked" in stale.json()["error"]
    api.headers["authorization"] = f"Bearer {changed.json()['token']}"
    assert api.get("/api/me").json()["username"] == "alice"
    assert old != api.headers["authorization"]
    # An admin changes their own password here too, not with the reset route.
    admin = console.api("root", admin=True)
    own = admin.post("/api/users/root/password", json={"password": "root-new-password"})
    assert own.status_code == 400 and "/api/me/password" in own.json()["error"]


def test_the_password_page_keeps_this_session_and_ends_the_others(console: Console) -> None:
    from tests.master_support import csrf_of

    http, elsewhere = console.browser("alice"), console.browser("alice")
    page = http.get("/password")
    assert page.status_code == 200 and 'name="old_password"' in page.text
    token = csrf_of(page.text)
    form = {"csrf_token": token, "new_password": "alice-new-pass", "repeat_password": "x" * 9}
    assert http.post("/password", data={**form, "old_password": "nope"}).status_code == 400
    wrong = http.post(
        "/password", data={**form, "old_password": "nope", "repeat_password": "alice-new-pass"}
    )
    assert wrong.status_code == 403 and "current password is wrong" in wrong.text
    done = http.post(
        "/password",
        data={**form, "old_password": password_of("alice"), "repeat_password": "alice-new-pass"},
    )
    assert done.status_code == 303 and "password changed" in http.get(done.headers["location"]).text
    assert http.get("/").status_code == 200  # this session goes on, with a new token
    assert http.get("/api/me").json()["username"] == "alice"
    assert elsewhere.get("/").status_code == 303  # the other one was signed out
    assert csrf_of(http.get("/password").text)  # still a working session


# -- worker tokens -------------------------------------------------------------------------
def test_an_expired_worker_token_is_refused(pool: Pool) -> None:
    token = issue_worker_token(pool.settings, "w1", ttl=2)
    conn = WorkerConnection(pool.address, "w1", token)
    assert conn.register(RESOURCES, []).heartbeat_interval > 0
    expires = float(claims_of(token)["exp"])  # type: ignore[arg-type]
    time.sleep(max(0.0, expires + 1.1 - time.time()))
    with pytest.raises(NodePoolError) as info:
        conn.heartbeat(pb.Metrics(), [])
    assert info.value.code == "UNAUTHENTICATED" and "expired" in str(info.value)


def test_worker_tokens_default_to_worker_token_ttl(pool: Pool) -> None:
    token = issue_worker_token(pool.settings.replace(worker_token_ttl=3600.0), "w1")
    assert abs(float(claims_of(token)["exp"]) - (time.time() + 3600)) < 5  # type: ignore[arg-type]
    with pytest.raises(Exception, match="must be positive"):
        issue_worker_token(pool.settings, "w1", ttl=0)
    admin = pool.user("root", admin=True)
    issued = admin.issue_worker_token("w9", ttl=120)
    assert abs(float(claims_of(issued)["exp"]) - (time.time() + 120)) < 5  # type: ignore[arg-type]
    with pytest.raises(NodePoolError, match="ttl"):
        admin.issue_worker_token("w9", ttl=-1)


def test_the_cli_revokes_a_nodes_tokens_and_a_new_one_works(pool: Pool, tmp_path: Path) -> None:
    issued = cli(pool.settings, tmp_path, "worker-token", "w2", "--ttl", "600")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert abs(float(claims_of(token)["exp"]) - (time.time() + 600)) < 30  # type: ignore[arg-type]
    old = WorkerConnection(pool.address, "w2", token)
    old.register(RESOURCES, [])
    other = pool.worker("w3")  # another node's token is untouched

    revoked = cli(pool.settings, tmp_path, "worker-token", "--revoke", "w2")
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked every token of worker w2" in revoked.stdout
    errors: list[str] = []

    def refused() -> bool:
        try:
            old.heartbeat(pb.Metrics(), [])
        except NodePoolError as exc:
            errors.append(f"{exc.code}: {exc}")
            return True
        return False

    assert wait_until(refused, timeout=tuning.WORKER_TOKEN_RECHECK + 3, interval=0.1)
    assert errors[-1].startswith("UNAUTHENTICATED: the tokens of worker 'w2' were revoked")
    assert "hivemind worker-token w2" in errors[-1]
    other.heartbeat(pb.Metrics(), [])

    fresh = cli(pool.settings, tmp_path, "worker-token", "w2")
    assert fresh.returncode == 0, fresh.stderr
    new = WorkerConnection(pool.address, "w2", fresh.stdout.strip())
    assert new.register(RESOURCES, []).heartbeat_interval > 0
    new.heartbeat(pb.Metrics(), [])

    usage = cli(pool.settings, tmp_path, "worker-token", "w2", "--revoke", "--ttl", "5")
    assert usage.returncode == 2 and "--revoke issues no token" in usage.stderr


def test_revoking_through_the_node_pool_is_immediate(pool: Pool) -> None:
    admin = pool.user("root", admin=True)
    conn = pool.worker("w1")
    conn.heartbeat(pb.Metrics(), [])
    admin.revoke_worker_tokens("w1")
    with pytest.raises(NodePoolError, match="tokens of worker 'w1' were revoked"):
        conn.heartbeat(pb.Metrics(), [])
    with pytest.raises(NodePoolError) as info:
        pool.user("bob").revoke_worker_tokens("w1")
    assert info.value.code == "PERMISSION_DENIED"
    renewed = WorkerConnection(pool.address, "w1", admin.issue_worker_token("w1"))
    renewed.register(RESOURCES, [])


def test_the_cli_changes_ones_own_password(pool: Pool, tmp_path: Path) -> None:
    pool.user("alice")
    logged_in = cli(
        pool.settings, tmp_path, "login", "-u", "alice", HIVEMIND_PASSWORD="alice-password"
    )
    assert logged_in.returncode == 0, logged_in.stderr
    wrong = cli(
        pool.settings,
        tmp_path,
        "passwd",
        HIVEMIND_PASSWORD="nope",
        HIVEMIND_NEW_PASSWORD="alice-new-pass",
    )
    assert wrong.returncode == 1 and "current password is wrong" in wrong.stderr
    done = cli(
        pool.settings,
        tmp_path,
        "passwd",
        HIVEMIND_PASSWORD="alice-password",
        HIVEMIND_NEW_PASSWORD="alice-new-pass",
    )
    assert done.returncode == 0, done.stderr
    assert "password of alice changed" in done.stdout
    whoami = cli(pool.settings, tmp_path, "whoami")  # with the new token it saved
    assert whoami.returncode == 0 and whoami.stdout.startswith("alice (user)")
    assert grpc_login(pool.address, "alice", "alice-new-pass") == "ok"


# -- the master's service token --------------------------------------------------------------
def test_whoami_answers_for_the_masters_service_token(console: Console) -> None:
    service = console.app.state.gateway.service_client()
    me = service.whoami()
    assert (me.username, me.role) == ("master", "service")
    reply = console.http().get("/api/me", headers={"authorization": f"Bearer {service.token}"})
    assert reply.status_code == 403 and "service token" in reply.json()["error"]
    with pytest.raises(NodePoolError) as info:
        service.list()
    assert info.value.code == "PERMISSION_DENIED"


def test_throttled_grpc_logins_carry_retry_after(pool: Pool) -> None:
    for i in range(tuning.LOGIN_ADDRESS_FAILURES_FREE):
        grpc_login(pool.address, f"u{i}", "x")
    channel = grpc.insecure_channel(pool.address)
    from hivemind.proto import hivemind_pb2_grpc as pb_grpc

    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.UserServiceStub(channel).Login(pb.LoginRequest(username="x", password="y"))
    channel.close()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(info.value.trailing_metadata())["retry-after"].isdigit()
