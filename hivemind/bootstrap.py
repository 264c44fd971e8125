"""First-run setup of a local stack: the database, the first admin and the CLI's login."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from hivemind.auth import signer_for
from hivemind.config import Settings
from hivemind.credentials import save_token
from hivemind.paths import layout
from hivemind.userdb import UserStore

ADMIN_USERNAME = "admin"


@dataclass(frozen=True)
class Bootstrap:
    admin_created: bool
    password_file: Path


def ensure_admin(settings: Settings) -> Bootstrap:
    """Create ``admin`` with a random password (saved 0600) when the database has no users,
    and log this machine's CLI in as that admin."""
    home = layout(settings.home).ensure()
    password_file = home.node_pool / "admin.password"
    store = UserStore(home.users_db)
    try:
        created = False
        if store.count() == 0:
            password = secrets.token_urlsafe(12)
            store.create_user(ADMIN_USERNAME, password, role="admin", credits=1000)
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(password + "\n")
            created = True
        admins = [u for u in store.list_users() if u.role == "admin" and not u.disabled]
    finally:
        store.close()
    if admins:
        token, _ = signer_for(settings).issue(
            admins[0].username, "user", "admin", settings.token_ttl
        )
        save_token(settings.client_address, token)
    return Bootstrap(admin_created=created, password_file=password_file)
