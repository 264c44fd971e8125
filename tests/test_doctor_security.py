"""security.secrets: the secret judges on captured config text, and the verdict on a real
HIVEMIND_HOME with each kind of secret problem. No secret value may appear in a finding."""

from __future__ import annotations

import json
import os
from pathlib import Path

from doctor.engine import run_doctor
from doctor.model import Finding, Status
from doctor.probes import secrets as probe
from hivemind.auth import load_secret
from hivemind.config import Settings
from hivemind.paths import layout
from hivemind.userdb import UserStore

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"
STRONG = "9f2c4e1a7b3d5f60a8c2e4b6d8f0a1c3"


def secrets_finding(settings: Settings) -> Finding:
    return run_doctor(settings, only=["security.secrets"]).result("security.secrets").finding


def assert_secret_not_shown(result: Finding, *values: str) -> None:
    shown = json.dumps(dict(result.evidence)) + result.summary + (result.fix or "")
    for value in values:
        assert value not in shown


def start_node_pool_state(settings: Settings) -> None:
    """What a node pool leaves behind: users.db and, unless SECRET_KEY is set, secret.key."""
    UserStore(layout(settings.home).users_db).close()
    load_secret(settings)


# -- judges on captured config text ------------------------------------------------------------
def test_config_setting_reads_a_captured_toml() -> None:
    text = (FIXTURES / "security_hivemind.toml").read_text()
    assert probe.config_setting(text, "SECRET_KEY") == "change-me"
    assert probe.config_setting(text, "worker_token") is None
    assert probe.config_setting("not = [valid", "secret_key") is None


def test_weakness_and_fingerprint() -> None:
    assert probe.weakness(b"") == "it is empty"
    assert probe.weakness(b"Change-Me") == "it is a well-known default value"
    assert probe.weakness(b"short-but-odd") is not None
    assert probe.weakness(b"a" * 32) == "it repeats one or two characters"
    assert probe.weakness(STRONG.encode()) is None
    assert probe.fingerprint(b"x") == "2d711642"
    assert len(probe.fingerprint(STRONG.encode())) == 8


# -- verdicts on a real home -------------------------------------------------------------------
def test_a_generated_secret_key_is_ok(settings: Settings) -> None:
    start_node_pool_state(settings)
    result = secrets_finding(settings)
    assert result.status is Status.OK, result.summary
    key = layout(settings.home).secret_key_file
    [source] = result.evidence["secrets"]
    assert source["mode"].startswith("0600") and source["length"] == 64
    assert_secret_not_shown(result, key.read_text().strip())


def test_a_default_secret_in_the_config_fails_without_showing_it(settings: Settings) -> None:
    config = layout(settings.home).root / "hivemind.toml"
    config.write_text((FIXTURES / "security_hivemind.toml").read_text())
    os.chmod(config, 0o600)
    with_default = settings.replace(secret_key="change-me")
    start_node_pool_state(with_default)
    result = secrets_finding(with_default)
    assert result.status is Status.FAIL
    assert "well-known default" in result.summary
    assert_secret_not_shown(result, "change-me", "hunter2hunter2")


def test_missing_secret_fails_where_a_node_pool_ran(settings: Settings) -> None:
    assert secrets_finding(settings).status is Status.SKIP  # nothing ran here yet
    start_node_pool_state(settings)
    layout(settings.home).secret_key_file.unlink()
    result = secrets_finding(settings)
    assert result.status is Status.FAIL and "no signing secret" in result.summary


def test_a_world_readable_secret_key_fails(settings: Settings) -> None:
    start_node_pool_state(settings)
    os.chmod(layout(settings.home).secret_key_file, 0o644)
    result = secrets_finding(settings)
    assert result.status is Status.FAIL
    assert result.fix == f"chmod 600 {layout(settings.home).secret_key_file}"


def test_two_different_secrets_on_one_host_warn(settings: Settings) -> None:
    start_node_pool_state(settings)  # secret.key from an earlier start without SECRET_KEY
    config = layout(settings.home).root / "hivemind.toml"
    config.write_text(f'SECRET_KEY = "{STRONG}"\n')
    os.chmod(config, 0o600)
    result = secrets_finding(settings.replace(secret_key=STRONG))
    assert result.status is Status.WARN
    assert "2 different signing secrets" in result.summary
    fingerprints = {row["sha256_8"] for row in result.evidence["secrets"]}
    assert probe.fingerprint(STRONG.encode()) in fingerprints and len(fingerprints) == 2
    assert_secret_not_shown(result, STRONG)


def test_world_readable_users_db_and_admin_password_warn(settings: Settings) -> None:
    start_node_pool_state(settings)
    users_db = layout(settings.home).users_db
    os.chmod(users_db, 0o644)
    password = layout(settings.home).node_pool / "admin.password"
    password.write_text("not-the-real-one\n")
    os.chmod(password, 0o644)
    result = secrets_finding(settings)
    assert result.status is Status.WARN
    assert result.evidence["world_readable"] == [str(users_db), str(password)]
    assert result.fix == f"chmod o-rwx {users_db} {password}"


def test_an_open_home_logs_and_redis_data_warn_with_chmod_commands(settings: Settings) -> None:
    start_node_pool_state(settings)
    home = layout(settings.home)
    assert secrets_finding(settings).status is Status.OK  # ensure() made the home 0750
    os.chmod(home.root, 0o755)
    log = home.nodepool_log
    log.write_text("a line\n")
    os.chmod(log, 0o644)
    aof = home.redis_dir / "appendonly.aof"
    aof.write_text("*1\r\n$4\r\nPING\r\n")
    os.chmod(aof, 0o604)
    conf = home.redis_dir / "redis.conf"  # a secret's mode, judged with the credentials
    conf.write_text('requirepass "x"\n')
    os.chmod(conf, 0o600)
    result = secrets_finding(settings)
    assert result.status is Status.WARN, result.summary
    assert f"HIVEMIND_HOME {home.root} is 0755" in result.summary
    assert "2 log or Redis data file(s) are open to every user" in result.summary
    assert result.evidence["logs_and_redis_data_open_to_others"] == [str(log), str(aof)]
    assert result.fix == f"chmod g-w,o-rwx {home.root} && chmod o-rwx {log} {aof}"
    # The next ensure() (every `up`, every service start) tightens the home again.
    home.ensure()
    assert os.stat(home.root).st_mode & 0o777 == 0o750


def test_a_redis_password_others_can_read_fails(settings: Settings) -> None:
    start_node_pool_state(settings)
    password = layout(settings.home).redis_password_file
    password.write_text("generated-by-up\n")
    os.chmod(password, 0o640)
    result = secrets_finding(settings)
    assert result.status is Status.FAIL
    assert result.fix == f"chmod 600 {password}"
    assert_secret_not_shown(result, "generated-by-up")
