"""The `hivemind` command. Each command parses its arguments, calls the library once and
renders the result."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from hivemind import __version__
from hivemind.cli import backup as backup_commands
from hivemind.cli import deploy as deploy_commands
from hivemind.cli import drill as _drill  # noqa: F401 (registers `doctor drill`)
from hivemind.cli import join as join_commands
from hivemind.cli import playbook as playbook_commands
from hivemind.cli import tasks as task_commands
from hivemind.cli import top as top_commands
from hivemind.cli.common import (
    OPTIONS,
    client,
    command,
    console,
    errors,
    fail,
    print_json,
    read_password,
    settings,
    styled,
    when,
)
from hivemind.cli.doctor import doctor_app
from hivemind.cli.tls import tls_app
from hivemind.cli.vpn import vpn_app
from hivemind.credentials import forget_token, save_token

if TYPE_CHECKING:
    from hivemind.stack import StackStatus

app = typer.Typer(
    name="hivemind",
    help="HiveMind: a distributed computing platform and its ops toolkit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Click's plain help: it wraps within the terminal and shows no `<bool>` type for flags;
    # every command below inherits it.
    rich_markup_mode=None,
)
user_app = typer.Typer(
    help="Users in node_pool/users.db (run on the node pool's host).", no_args_is_help=True
)
db_app = typer.Typer(help="The SQLite database.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(db_app, name="db")
app.add_typer(doctor_app, name="doctor")
app.add_typer(vpn_app, name="vpn")
app.add_typer(tls_app, name="tls")
task_commands.register(app)
playbook_commands.register(app)
backup_commands.register(app)
join_commands.register(app)
deploy_commands.register(app)
top_commands.register(app)


@app.callback()
def main_options(
    config: str = typer.Option(None, "--config", help="A hivemind.toml to read."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    OPTIONS.config = config
    OPTIONS.debug = debug


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"hivemind {__version__}")


# -- the local stack ------------------------------------------------------------------------
@app.command()
@command
def up(
    workers: int = typer.Option(1, metavar="N", help="Workers to start."),
    foreground: bool = typer.Option(False, help="Stay attached; Ctrl-C stops everything."),
    ha: bool = typer.Option(
        False,
        "--ha",
        help="High availability on this machine: 3 Redis, 3 Sentinels and 2 node pools.",
    ),
) -> None:
    """Start Redis (if none answers), the node pool and workers; return when all are healthy."""
    from hivemind import stack
    from hivemind.bootstrap import ensure_admin

    s = settings()
    if ha:
        if foreground:
            fail("--ha runs in the background; leave out --foreground")
        from hivemind import ha_stack

        s, note = ha_stack.prepare(s)
        if note:
            _line(escape(note))
    boot = ensure_admin(s)
    if foreground:
        raise typer.Exit(stack.run_foreground(s, workers))
    status = stack.up(s, workers=workers, on_event=lambda line: _line(escape(line)), ha=ha)
    _render_stack(status)
    if boot.admin_created:
        _line(f"created user [bold]admin[/]; its password is in {escape(str(boot.password_file))}")
    _line("\n[bold]Ready.[/] This CLI is logged in as admin.")
    master = next((svc for svc in status.services if svc.name == "master"), None)
    if master is not None and master.enabled:
        host = "localhost" if s.master_host in ("", "0.0.0.0", "::") else s.master_host
        password = boot.password_file
        hint = f" (admin's password is in {escape(str(password))})" if password.exists() else ""
        _line(f"  Web console:  http://{host}:{s.master_port}/{hint}")
    _line("  Try:          hivemind submit examples/hello --wait")
    _line("                hivemind submit hivemind.examples:add --arg 2 --arg 3 --wait")


def _line(markup: str) -> None:
    """One line that is never wrapped (paths and URLs stay whole when piped or narrow)."""
    console.print(markup, soft_wrap=True)


@app.command()
@command
def down() -> None:
    """Stop what `hivemind up` started (and only that)."""
    from hivemind import stack

    status = stack.down(settings(), on_event=lambda line: _line(escape(line)))
    _render_stack(status)


@app.command()
@command
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the local stack's processes and health."""
    from hivemind import stack

    result = stack.status(settings())
    if as_json:
        print_json(
            {
                "healthy": result.healthy,
                "redis_url": result.redis_url,
                "services": [vars(s) for s in result.services],
            }
        )
    else:
        _render_stack(result)
    if not result.healthy:
        raise typer.Exit(1)


def _render_stack(status: StackStatus) -> None:
    table = Table(show_edge=False)
    for column in ("SERVICE", "PID", "STATE", "DETAIL"):
        table.add_column(column)
    for svc in status.services:
        if not svc.enabled:
            state = "n/a"
        else:
            state = "healthy" if svc.healthy else "running" if svc.running else "stopped"
        table.add_row(svc.name, str(svc.pid or "-"), styled_state(state), escape(svc.detail))
    console.print(table)
    # Below the table, not in it: a column would cut long paths to the terminal's width.
    logs = [(svc.name, svc.log) for svc in status.services if svc.enabled and svc.log]
    if logs:
        width = max(len(name) for name, _ in logs)
        _line("Logs:")
        for name, log in logs:
            _line(f"  {escape(name):<{width}}  {escape(str(log))}")


def styled_state(state: str) -> str:
    return {
        "healthy": "[green]healthy[/]",
        "running": "[yellow]running[/]",
        "n/a": "[dim]n/a[/]",
    }.get(state, "[red]stopped[/]")


# -- daemons --------------------------------------------------------------------------------
@app.command()
@command
def nodepool(
    host: str = typer.Option(None, metavar="ADDRESS", help="Override GRPC_HOST."),
    port: int = typer.Option(None, metavar="PORT", help="Override GRPC_PORT."),
) -> None:
    """Run the node pool in the foreground (for systemd: hivemind-nodepool)."""
    from hivemind.nodepool.server import serve

    raise typer.Exit(serve(settings(grpc_host=host, grpc_port=port)))


@app.command()
@command
def master(
    host: str = typer.Option(None, metavar="ADDRESS", help="Override MASTER_HOST."),
    port: int = typer.Option(None, metavar="PORT", help="Override MASTER_PORT."),
) -> None:
    """Run the web console and REST API in the foreground (for systemd: hivemind-master)."""
    from hivemind.master.server import serve

    raise typer.Exit(serve(settings(master_host=host, master_port=port)))


@app.command()
@command
def worker(
    node_id: str = typer.Option(
        None, "--node-id", metavar="NODE_ID", help="This worker's id (default: hostname)."
    ),
    allow: list[str] = typer.Option(
        [], "--allow", metavar="MODULE", help="A module whose functions may run (repeatable)."
    ),
    label: list[str] = typer.Option(
        [], "--label", metavar="LABEL", help="A label to advertise (repeatable)."
    ),
    gpu: int = typer.Option(0, metavar="N", help="GPUs to advertise."),
    capacity: int | None = typer.Option(
        None, metavar="N", help="Tasks at once (default: MAX_CONCURRENT_TASKS)."
    ),
) -> None:
    """Run a worker in the foreground (for systemd: hivemind-worker@ID)."""
    import socket

    from hivemind.paths import layout
    from hivemind.worker.daemon import WorkerOptions, run_worker

    s = settings()
    node = node_id or socket.gethostname()
    token = s.worker_token or os.environ.get("HIVEMIND_WORKER_TOKEN", "")
    token_file = layout(s.home).worker_token_file(node)
    if not token and token_file.exists():
        token = token_file.read_text().strip()
    if not token:
        fail(
            f"no worker token: set WORKER_TOKEN or write one to {token_file} "
            f"(`hivemind worker-token {node}` on the node pool's host prints one)",
            2,
        )
    allowed = tuple(allow) or ("hivemind.examples",)
    options = WorkerOptions(
        node_id=node,
        token=token,
        allowed_modules=allowed,
        labels=tuple(label),
        gpu=gpu,
        capacity=capacity or 0,
    )
    raise typer.Exit(run_worker(s, options))


@app.command("worker-token")
@command
def worker_token(
    node_id: str,
    save: bool = typer.Option(
        False, help="Write it to worker/config/NODE_ID.token (mode 0600) instead of printing it."
    ),
    ttl: float = typer.Option(
        None,
        "--ttl",
        metavar="SECONDS",
        help="Seconds the token stays valid (default: WORKER_TOKEN_TTL).",
    ),
    revoke: bool = typer.Option(
        False,
        "--revoke",
        help="Revoke every token issued to NODE_ID so far instead (a new one works again).",
    ),
) -> None:
    """Issue a token that lets one worker join as NODE_ID (uses this host's signing secret),
    or --revoke the ones it has."""
    from hivemind import tuning
    from hivemind.auth import issue_worker_token
    from hivemind.paths import layout, write_private

    s = settings()
    if revoke:
        if save or ttl is not None:
            fail("--revoke issues no token: leave out --save and --ttl", 2)
        store = _store()
        try:
            store.revoke_worker_tokens(node_id)
        finally:
            store.close()
        console.print(
            f"revoked every token of worker {escape(node_id)}: the node pool refuses them "
            f"within {tuning.WORKER_TOKEN_RECHECK:g} s; `hivemind worker-token {escape(node_id)}` "
            "issues a new one"
        )
        return
    if ttl is not None and not ttl > 0:
        fail(f"--ttl must be a positive number of seconds, not {ttl:g}", 2)
    token = issue_worker_token(s, node_id, ttl)
    if save:
        path = layout(s.home).ensure().worker_token_file(node_id)
        write_private(path, token + "\n")
        console.print(f"saved to {path}")
    else:
        sys.stdout.write(token + "\n")


# -- login ----------------------------------------------------------------------------------
@app.command()
@command
def login(
    username: str = typer.Option(None, "--username", "-u", metavar="NAME"),
    password: str = typer.Option(
        None,
        "--password",
        metavar="PASSWORD",
        envvar="HIVEMIND_PASSWORD",
        help="Prefer the prompt, a pipe or $HIVEMIND_PASSWORD.",
    ),
) -> None:
    """Log in to the node pool; the token is stored with mode 0600."""
    s = settings()
    username = username or typer.prompt("username")
    password = password or read_password("password: ")
    with client(s) as c:
        reply = c.login(username, password)
    path = save_token(s.client_address, reply.token)
    console.print(
        f"logged in as {reply.user.username} ({reply.user.role}) until "
        f"{when(reply.expires_at)}; token saved in {path}"
    )


@app.command()
@command
def logout() -> None:
    """Forget the stored token for this node pool."""
    s = settings()
    console.print("logged out" if forget_token(s.client_address) else "was not logged in")


@app.command()
@command
def passwd(
    old_password: str = typer.Option(
        None,
        "--old-password",
        metavar="PASSWORD",
        envvar="HIVEMIND_PASSWORD",
        help="Prefer the prompt.",
    ),
    new_password: str = typer.Option(
        None,
        "--new-password",
        metavar="PASSWORD",
        envvar="HIVEMIND_NEW_PASSWORD",
        help="Prefer the prompt.",
    ),
) -> None:
    """Change your own password on the node pool (the current one is needed). Your other
    tokens stop working; the stored one is replaced."""
    s = settings()
    old_password = old_password or read_password("current password: ")
    if not new_password:
        new_password = read_password("new password: ")
        # Piped passwords come one per line, with no second one to compare.
        if sys.stdin.isatty() and read_password("new password again: ") != new_password:
            fail("the new passwords differ", 2)
    with client(s) as c:
        reply = c.change_password(old_password, new_password)
    path = save_token(s.client_address, reply.token)
    console.print(
        f"password of {escape(reply.user.username)} changed; its other tokens no longer work. "
        f"New token saved in {path}"
    )


@app.command()
@command
def whoami() -> None:
    """Who the stored token belongs to."""
    with client() as c:
        user = c.whoami()
    console.print(f"{user.username} ({user.role}), {user.credits} credits")


# -- users and the database (local, on the node pool's host) -------------------------------
def _store():  # type: ignore[no-untyped-def]
    from hivemind.paths import layout
    from hivemind.userdb import UserStore

    return UserStore(layout(settings().home).users_db)


@user_app.command("add")
@command
def user_add(
    username: str,
    role: str = typer.Option("user", metavar="ROLE", help="admin or user"),
    credits: int = typer.Option(0, metavar="N", help="Credits to start with."),
    password: str = typer.Option(
        None,
        metavar="PASSWORD",
        envvar="HIVEMIND_NEW_PASSWORD",
        help="Prefer the prompt, a pipe or $HIVEMIND_NEW_PASSWORD.",
    ),
) -> None:
    """Create a user."""
    password = password or read_password(f"password for {username}: ")
    store = _store()
    try:
        user = store.create_user(username, password, role, credits)
    finally:
        store.close()
    console.print(f"created {user.role} {user.username}")


@user_app.command("list")
@command
def user_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """List users."""
    store = _store()
    try:
        users = store.list_users()
    finally:
        store.close()
    if as_json:
        print_json([vars(u) for u in users])
        return
    table = Table(show_edge=False)
    for column in ("USER", "ROLE", "CREDITS", "CREATED", "STATE"):
        table.add_column(column)
    for u in users:
        table.add_row(
            escape(u.username),
            u.role,
            str(u.credits),
            when(u.created_at),
            styled("offline") if u.disabled else "enabled",
        )
    console.print(table)


@user_app.command("passwd")
@command
def user_passwd(
    username: str,
    password: str = typer.Option(
        None,
        metavar="PASSWORD",
        envvar="HIVEMIND_NEW_PASSWORD",
        help="Prefer the prompt or a pipe.",
    ),
) -> None:
    """Set a user's password (no old one needed: this is the host's admin); it revokes their
    tokens, which the node pool refuses within USER_RECHECK seconds."""
    password = password or read_password(f"new password for {username}: ")
    store = _store()
    try:
        store.set_password(username, password)
    finally:
        store.close()
    console.print(f"password of {username} changed")


@user_app.command("disable")
@command
def user_disable(username: str, enable: bool = typer.Option(False, help="Enable instead.")) -> None:
    """Disable (or --enable) a user; their tokens stop working at once."""
    store = _store()
    try:
        store.set_disabled(username, not enable)
    finally:
        store.close()
    console.print(f"{username} {'enabled' if enable else 'disabled'}")


@db_app.command("migrate")
@command
def db_migrate() -> None:
    """Create node_pool/users.db or bring its schema up to date."""
    from hivemind.paths import layout
    from hivemind.userdb import migrate

    path = layout(settings().home).ensure().users_db
    before, after = migrate(path)
    if before == after:
        console.print(f"{path} is up to date (schema {after})")
    else:
        console.print(f"{path}: schema {before} -> {after}")


def main() -> None:
    with errors():
        app()


if __name__ == "__main__":
    main()
