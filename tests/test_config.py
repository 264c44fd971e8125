"""Settings: precedence, the guide's names and defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind.config import load_settings
from hivemind.errors import ConfigError


def test_defaults_are_the_guides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={}, home=tmp_path)
    assert (s.grpc_host, s.grpc_port) == ("0.0.0.0", 50051)
    assert (s.master_host, s.master_port) == ("0.0.0.0", 5000)
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.task_timeout == 300
    assert s.max_task_data_size == 100 * 1024 * 1024
    assert s.effective_max_concurrent_tasks >= 1
    assert s.client_address == "localhost:50051"


def test_file_then_environment_then_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "hivemind.toml"
    cfg.write_text('GRPC_PORT = 6000\ntask_timeout = 60\nREDIS_URL = "redis://:pw@h:1/2"\n')
    s = load_settings(environ={"HIVEMIND_TASK_TIMEOUT": "90"}, home=tmp_path)
    assert s.grpc_port == 6000  # from ./hivemind.toml
    assert s.task_timeout == 90  # the environment beats the file
    assert s.redacted()["REDIS_URL"] == "redis://:***@h:1/2"
    s = load_settings(environ={"HIVEMIND_TASK_TIMEOUT": "90"}, task_timeout=5, home=tmp_path)
    assert s.task_timeout == 5


def test_explicit_config_beats_env_var_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("GRPC_PORT = 1111\n")
    b.write_text("GRPC_PORT = 2222\n")
    monkeypatch.setenv("HIVEMIND_CONFIG", str(b))
    assert load_settings(environ={}).grpc_port == 2222
    assert load_settings(a, environ={}).grpc_port == 1111


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("GRPC_PROT = 1\n", "unknown setting 'GRPC_PROT'"),
        ('GRPC_PORT = "many"\n', "GRPC_PORT must be int"),
        ("GRPC_PORT = 70000\n", "GRPC_PORT must be a port number"),
        ("this is not toml\n", "not valid TOML"),
    ],
)
def test_bad_file_names_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    assert message in str(info.value)
    if "GRPC_PORT must be a port" not in message:
        assert str(cfg) in str(info.value)


def test_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="HIVEMIND_HEARTBEAT_INTERVAL"):
        load_settings(environ={"HIVEMIND_HEARTBEAT_INTERVAL": "soon"}, home=tmp_path)


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
