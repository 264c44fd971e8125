"""WireGuard setup: real keys, configs that `wg` and `wg-quick` read, private files, and the
doctor's view of it. Bringing an interface up needs root and a kernel module: not tested."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from doctor import Status, run_doctor
from doctor.checks.network import generated_not_installed
from hivemind import vpn
from hivemind.config import Settings


def _wg(*args: str, stdin: str = "") -> str:
    if shutil.which("wg") is None:
        pytest.fail("wireguard-tools is not installed (.ci/run installs it)")
    done = subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_init_and_peers_make_configs_wireguard_reads(settings: Settings) -> None:
    server_path = vpn.init_vpn(settings, "pool.example.net")
    gpu1_path, gpu1_text = vpn.add_peer(settings, "gpu-1")
    _gpu2_path, gpu2_text = vpn.add_peer(settings, "gpu-2")

    server = vpn.parse_config(server_path.read_text())
    gpu1, gpu2 = vpn.parse_config(gpu1_text), vpn.parse_config(gpu2_text)
    assert server.interface["Address"] == "10.77.0.1/24"
    assert [p["Name"] for p in server.peers] == ["gpu-1", "gpu-2"]
    assert [p["AllowedIPs"] for p in server.peers] == ["10.77.0.2/32", "10.77.0.3/32"]
    assert (
        gpu1.interface["Address"] == "10.77.0.2/24" and gpu2.interface["Address"] == "10.77.0.3/24"
    )
    assert gpu1.peers[0]["Endpoint"] == "pool.example.net:51820"
    # `wg pubkey` agrees with the keys each side holds of the other.
    assert _wg("pubkey", stdin=gpu1.interface["PrivateKey"]) == server.peers[0]["PublicKey"]
    assert _wg("pubkey", stdin=server.interface["PrivateKey"]) == gpu1.peers[0]["PublicKey"]
    # wg-quick reads both files, and finds them private.
    for path in (server_path, gpu1_path):
        stripped = subprocess.run(
            ["wg-quick", "strip", str(path)], capture_output=True, text=True, timeout=10
        )
        assert stripped.returncode == 0, stripped.stderr
        assert "world accessible" not in stripped.stderr
        assert "PrivateKey" in stripped.stdout

    for path in (server_path, gpu1_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(server_path.parent.stat().st_mode) == 0o700
    with pytest.raises(vpn.VpnError, match="exists already"):
        vpn.add_peer(settings, "gpu-1")


def test_a_config_that_does_not_parse_says_where() -> None:
    with pytest.raises(vpn.VpnError, match=r"wg0\.conf:3: cannot read"):
        vpn.parse_config("[Interface]\nPrivateKey = x\nnonsense\n", "wg0.conf")


def test_no_private_key_is_written_inside_a_repository(tmp_path: Path) -> None:
    repo = tmp_path / "project"
    (repo / ".git").mkdir(parents=True)
    settings = Settings(home=repo / "hivemind-home")
    with pytest.raises(vpn.VpnError, match="outside any repository"):
        vpn.init_vpn(settings, "pool.example.net")
    assert not (repo / "hivemind-home" / "vpn").exists()


def test_the_cli_prints_the_peer_config(settings: Settings) -> None:
    env = {"HIVEMIND_HOME": str(settings.home), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "hivemind", "vpn"]
    subprocess.run([*run, "init", "--endpoint", "10.0.0.5"], env=env, check=True, timeout=60)
    printed = subprocess.run(
        [*run, "add-peer", "edge-1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert printed.returncode == 0, printed.stderr
    assert vpn.parse_config(printed.stdout.split("# saved to")[0]).peers[0]["Endpoint"] == (
        "10.0.0.5:51820"
    )


def test_the_doctor_sees_a_generated_setup_that_is_not_installed(settings: Settings) -> None:
    vpn.init_vpn(settings, "pool.example.net")
    finding = run_doctor(settings, only=("network.vpn",)).result("network.vpn").finding
    assert finding.status is Status.WARN, finding.summary
    assert "wg-quick up wg-hivemind" in finding.fix
    # Pure: nothing generated, or the interface up, says nothing.
    assert generated_not_installed(None, [], [], True) is None
    assert generated_not_installed(Path("/x.conf"), ["wg-hivemind"], [], True) is None


def test_the_doctor_flags_a_private_key_in_the_repository(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    vpn.init_vpn(settings, "pool.example.net")
    _peer, text = vpn.add_peer(settings, "leaky")
    (repo / "deploy").mkdir()
    (repo / "deploy" / "wg0.conf").write_text(text)
    monkeypatch.chdir(repo)
    finding = run_doctor(settings, only=("security.secrets",)).result("security.secrets").finding
    assert finding.status is Status.FAIL
    assert "deploy/wg0.conf" in finding.summary and "git rm --cached" in finding.fix
    (repo / "deploy" / "wg0.conf").unlink()
    clean = run_doctor(settings, only=("security.secrets",)).result("security.secrets").finding
    assert "WireGuard" not in clean.summary
