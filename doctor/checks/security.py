"""The token-signing secret: set, not a default, the same wherever this host's services read
it, and kept from other users; with users.db, the config files and the Redis password not
world-readable, HIVEMIND_HOME at most 0750, and the logs, Redis's AOF/RDB and its log closed
to other users.

Secrets never reach the evidence: only lengths, 8-hex fingerprints and file modes do.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from doctor.checks.sqlite import nodepool_traces, related_files
from doctor.context import Context, Unavailable
from doctor.logfiles import log_folders
from doctor.model import Finding
from doctor.probes import secrets as probe
from doctor.probes.sqlite_file import describe_mode
from doctor.registry import check
from hivemind.config import CONFIG_FILE_NAME
from hivemind.paths import HOME_MODE, HomeLayout
from hivemind.vpn import PRIVATE_KEY_ERE

GENERATE = (
    'generate one with `python3 -c "import secrets; print(secrets.token_hex(32))"`, set it '
    "as SECRET_KEY in $HIVEMIND_HOME/hivemind.toml (mode 600), and restart the node pool "
    "and master; or remove SECRET_KEY everywhere so they share node_pool/secret.key"
)


@dataclass(frozen=True)
class SecretSource:
    name: str
    value: bytes
    #: Permission bits of the file it lives in (None for the settings in effect).
    mode: int | None = None

    def evidence(self) -> dict[str, object]:
        row: dict[str, object] = {
            "source": self.name,
            "length": len(self.value),
            "sha256_8": probe.fingerprint(self.value),
        }
        if self.mode is not None:
            row["mode"] = describe_mode(self.mode)
        return row


def config_files(ctx: Context) -> list[Path]:
    """The hivemind.toml files this host's processes may load (see hivemind.config)."""
    candidates = [
        Path(os.environ["HIVEMIND_CONFIG"]) if os.environ.get("HIVEMIND_CONFIG") else None,
        Path.cwd() / CONFIG_FILE_NAME,
        ctx.home.root / CONFIG_FILE_NAME,
    ]
    seen: dict[Path, None] = {}
    for path in candidates:
        if path is not None and path.is_file():
            seen.setdefault(path.resolve(), None)
    return list(seen)


def private_files(ctx: Context) -> list[Path]:
    """Files that hold credentials: configs, users.db, the first admin's password (written by
    `hivemind up`), worker tokens, the master's config and the config `hivemind up` writes
    for its Redis (requirepass)."""
    home = ctx.home
    files = list(config_files(ctx)) + related_files(home.users_db)
    files += [p for p in (home.node_pool / "admin.password",) if p.is_file()]
    files += [p for p in (home.redis_dir / "redis.conf",) if p.is_file()]
    for folder in (home.worker_config, home.master_config):
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.is_file())
    return files


def secret_sources(ctx: Context) -> list[SecretSource]:
    sources = []
    if ctx.settings.secret_key:
        sources.append(SecretSource("SECRET_KEY in effect", ctx.settings.secret_key.encode()))
    for path in config_files(ctx):
        try:
            value = probe.config_setting(path.read_text(errors="replace"), "secret_key")
            mode = path.stat().st_mode
        except OSError:
            continue
        if value is not None:
            sources.append(SecretSource(f"SECRET_KEY in {path}", value.encode(), mode))
    key_file = ctx.home.secret_key_file
    if key_file.is_file():
        try:
            key, key_mode = key_file.read_bytes().strip(), key_file.stat().st_mode
        except OSError as exc:
            # Without it we cannot tell a missing secret from a hidden one: say so, not "fail".
            raise Unavailable(
                f"cannot read {key_file}: {exc.strerror or exc} (run the doctor as the user "
                "the node pool runs as)"
            ) from exc
        sources.append(SecretSource(str(key_file), key, key_mode))
    return sources


def private_keys_in_repository(ctx: Context) -> list[str]:
    """Files of the git work tree around the current folder (tracked, or untracked and not
    ignored) with a WireGuard private key in them; [] outside a repository or without git."""
    try:
        found = ctx.run(("git", "grep", "-l", "--untracked", "-E", PRIVATE_KEY_ERE))
    except Unavailable:
        return []
    # 0: found; 1: nothing; 128: not a repository.
    return parse_file_list(found.stdout) if found.exit_code == 0 else []


def parse_file_list(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def world_readable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def home_too_open(mode: int) -> bool:
    """HIVEMIND_HOME allows more than 0750: the group may write, or the world may look."""
    return bool(stat.S_IMODE(mode) & 0o777 & ~HOME_MODE)


def open_to_others(mode: int) -> bool:
    """A log or data file any user may read or write (0640 is the most it should allow)."""
    return bool(stat.S_IMODE(mode) & 0o007)


def logs_and_redis_data(home: HomeLayout) -> list[Path]:
    """HiveMind's log files (rotated copies and consoles too), and the files of the Redis
    `hivemind up` runs: its log, AOF and RDB. Symlinks are not followed."""
    found: list[Path] = []
    redis_dir = home.redis_dir
    folders = [*log_folders(home), redis_dir, redis_dir / "appendonlydir"]
    for folder in folders:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for path in entries:
            if path.is_symlink() or not path.is_file():
                continue
            if folder == redis_dir and not (
                path.suffix in (".log", ".aof", ".rdb") or ".log." in path.name
            ):
                continue  # redis.conf and redis.password are judged as secrets
            found.append(path)
    return found


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode
    except OSError:
        return None


@check(
    "security.secrets",
    title="The token-signing secret is set, strong, shared and private",
    guide="(implied by 用戶認證失敗: 1 Redis 連接失敗; 5 數據庫連接失敗)",
)
def secrets_check(ctx: Context) -> Finding:
    committed = private_keys_in_repository(ctx)
    if committed:
        return Finding.fail(
            f"WireGuard private key(s) in the repository here: {', '.join(committed[:5])}; "
            "anyone with the repository can join the VPN as that peer",
            f"git rm --cached {' '.join(committed[:5])}, make new keys (`hivemind vpn "
            "add-peer`), and keep the configs in HIVEMIND_HOME/vpn, outside any repository",
            committed_private_keys=committed,
        )
    sources = secret_sources(ctx)
    exposed = [str(p) for p in private_files(ctx) if world_readable(p)]
    evidence: dict[str, object] = {"secrets": [s.evidence() for s in sources]}
    if exposed:
        evidence["world_readable"] = exposed
    home_mode = _mode(ctx.home.root)
    if home_mode is not None:
        evidence["home_mode"] = describe_mode(home_mode)
    loose_home = home_mode is not None and home_too_open(home_mode)
    open_files = [str(p) for p in logs_and_redis_data(ctx.home) if open_to_others(_mode(p) or 0)]
    if open_files:
        evidence["logs_and_redis_data_open_to_others"] = open_files
    redis_password = ctx.home.redis_password_file
    password_mode = _mode(redis_password)
    if password_mode is not None:
        evidence["redis_password_mode"] = describe_mode(password_mode)
    in_use = sources[0] if sources else None
    if in_use is None:
        if not nodepool_traces(ctx) and not ctx.home.users_db.exists():
            return Finding.skip(
                "no SECRET_KEY and no node_pool/secret.key: no node pool has run on this host"
            )
        return Finding.fail(
            "a node pool has run here but no signing secret is left (no SECRET_KEY, no "
            "node_pool/secret.key): every token it issued stops working at its next start",
            GENERATE,
            **evidence,
        )
    weak = [(s, why) for s in sources if (why := probe.weakness(s.value))]
    if weak:
        source, why = weak[0]
        return Finding.fail(
            f"the signing secret from {source.name} must not be used: {why}; anyone can "
            "forge an admin token",
            GENERATE,
            **evidence,
        )
    leaked = [s.name for s in sources if s.mode is not None and s.mode & stat.S_IROTH]
    if leaked:
        return Finding.fail(
            f"every user on this host can read the signing secret ({', '.join(leaked)}) and "
            "forge tokens",
            "chmod 600 " + " ".join(_path_of(name) for name in leaked),
            **evidence,
        )
    if password_mode is not None and password_mode & 0o077:
        return Finding.fail(
            f"other users can read the Redis password ({redis_password}) and rewrite any "
            "task in Redis",
            f"chmod 600 {redis_password}",
            **evidence,
        )
    fingerprints = {s.evidence()["sha256_8"] for s in sources}
    if len(fingerprints) > 1:
        return Finding.warn(
            f"{len(fingerprints)} different signing secrets on this host: a service started "
            f"with another config rejects the tokens of the one using {in_use.name}",
            "keep one: either SECRET_KEY in $HIVEMIND_HOME/hivemind.toml for every service, "
            "or none and node_pool/secret.key",
            **evidence,
        )
    problems, fixes = [], []
    if loose_home:
        problems.append(
            f"HIVEMIND_HOME {ctx.home.root} is {describe_mode(home_mode or 0)}, more than "
            f"{HOME_MODE:04o}"
        )
        fixes.append(f"chmod g-w,o-rwx {ctx.home.root}")
    if exposed:
        problems.append(f"{len(exposed)} file(s) with credentials are readable by every user")
    if open_files:
        problems.append(
            f"{len(open_files)} log or Redis data file(s) are open to every user (at most "
            "0640: they hold task names, errors, output and the whole Redis state)"
        )
    if exposed or open_files:
        fixes.append("chmod o-rwx " + " ".join(exposed + open_files))
    if problems:
        return Finding.warn("; ".join(problems), " && ".join(fixes), **evidence)
    return Finding.ok(
        f"one signing secret ({len(in_use.value)} bytes, from {in_use.name}), private files "
        "not world-readable, HIVEMIND_HOME, logs and Redis data closed to other users",
        **evidence,
    )


def _path_of(source_name: str) -> str:
    return source_name.removeprefix("SECRET_KEY in ")
