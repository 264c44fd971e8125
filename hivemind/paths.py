"""The layout of HIVEMIND_HOME.

The guide's own relative paths are kept, so that its commands (``tail -f
node_pool/logs/nodepool.log``, ``sqlite3 node_pool/users.db …``) work verbatim after
``cd $HIVEMIND_HOME``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

#: Most the home may allow: its owner everything, its group to read, the world nothing.
HOME_MODE = 0o750
REDIS_PASSWORD_FILE_NAME = "redis.password"


def _tighten(path: Path, most: int) -> None:
    """Drop the permission bits of ``path`` beyond ``most``, if it is ours (another user's
    folder is left as it is; the doctor's security.secrets names it)."""
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid == os.geteuid() and mode & 0o777 & ~most:
        os.chmod(path, mode & ~0o777 | mode & most)  # setgid and sticky bits stay


@dataclass(frozen=True)
class HomeLayout:
    root: Path

    # -- the guide's paths -------------------------------------------------------------
    @property
    def node_pool(self) -> Path:
        return self.root / "node_pool"

    @property
    def users_db(self) -> Path:
        return self.node_pool / "users.db"

    @property
    def secret_key_file(self) -> Path:
        return self.node_pool / "secret.key"

    @property
    def nodepool_log(self) -> Path:
        return self.node_pool / "logs" / "nodepool.log"

    def named_nodepool_log(self, name: str) -> Path:
        """The log of node pool NODEPOOL_NAME ``name`` (one of several on a host)."""
        return self.nodepool_log.with_name(f"nodepool-{name}.log") if name else self.nodepool_log

    @property
    def master_log(self) -> Path:
        return self.root / "master" / "logs" / "master.log"

    @property
    def master_config(self) -> Path:
        return self.root / "master" / "config"

    @property
    def worker_log(self) -> Path:
        return self.root / "worker" / "logs" / "worker.log"

    @property
    def task_execution_log(self) -> Path:
        return self.root / "worker" / "logs" / "task_execution.log"

    @property
    def worker_config(self) -> Path:
        return self.root / "worker" / "config"

    # -- HiveMind's own folders ------------------------------------------------------------
    @property
    def data(self) -> Path:
        """Task bundles, results and checkpoints, stored by the node pool."""
        return self.root / "data"

    @property
    def worker_work(self) -> Path:
        """Scratch work dirs of running tasks."""
        return self.root / "worker" / "work"

    @property
    def redis_dir(self) -> Path:
        """Data dir of the Redis that `hivemind up` starts when none answers."""
        return self.root / "redis"

    @property
    def redis_password_file(self) -> Path:
        """The password `hivemind up` generated for its Redis (mode 0600, made once)."""
        return self.redis_dir / REDIS_PASSWORD_FILE_NAME

    @property
    def run(self) -> Path:
        """Pid files of the processes `hivemind up` started."""
        return self.root / "run"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    def worker_token_file(self, node_id: str) -> Path:
        return self.worker_config / f"{node_id}.token"

    def ensure(self) -> HomeLayout:
        """Create every folder; the home gets mode 0750 (or keeps a tighter one), the
        private folders 0700. A home of ours found looser is tightened to 0750."""
        with contextlib.suppress(FileExistsError):
            self.root.mkdir(mode=HOME_MODE, parents=True)
        _tighten(self.root, HOME_MODE)
        for folder in (
            self.node_pool / "logs",
            self.master_log.parent,
            self.master_config,
            self.worker_log.parent,
            self.worker_config,
            self.worker_work,
            self.data,
            self.redis_dir,
            self.run,
            self.backups,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        for private in (self.node_pool, self.worker_config, self.data, self.redis_dir):
            os.chmod(private, 0o700)
        return self


def layout(root: str | os.PathLike[str]) -> HomeLayout:
    return HomeLayout(Path(root).expanduser().resolve())


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``path`` as 0600 from its first byte (never briefly readable by others), whole
    or not at all (a temporary file renamed over it); its folder is made 0700 if missing."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
