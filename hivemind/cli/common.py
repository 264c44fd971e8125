"""What every CLI command shares: settings from the global options, errors, rendering."""

from __future__ import annotations

import getpass
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape

from hivemind.client import Client
from hivemind.config import Settings, load_settings
from hivemind.credentials import load_token
from hivemind.errors import HivemindError
from hivemind.states import TaskState
from hivemind.tls import client_security

if TYPE_CHECKING:
    from hivemind.remote import SSHOptions, SSHTarget

console = Console()
# soft_wrap: an error stays one line, however narrow the terminal.
err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class GlobalOptions:
    config: str | None = None
    debug: bool = False


OPTIONS = GlobalOptions()

# The SSH options of every command that reaches other hosts (doctor, playbook run, recover,
# backup): declared once, so their names and help read the same everywhere.
HOST_OPTION = typer.Option(
    None, "--host", metavar="USER@HOST[:PORT]", help="A host to run on over SSH (repeatable)."
)
INVENTORY_OPTION = typer.Option(None, "--inventory", metavar="FILE", help="A file of hosts.")
SSH_KEY_OPTION = typer.Option(None, "--ssh-key", metavar="FILE", help="Private key for SSH.")
KNOWN_HOSTS_OPTION = typer.Option(
    None, "--known-hosts", metavar="FILE", help="known_hosts file to trust."
)
INSECURE_HOST_KEY_OPTION = typer.Option(
    False, "--insecure-host-key", help="Accept unknown SSH host keys (on purpose)."
)
REMOTE_HIVEMIND_OPTION = typer.Option(
    "hivemind", "--remote-hivemind", metavar="COMMAND", help="How hivemind is run on the hosts."
)


def ssh_targets(
    hosts: list[str] | None, inventory: str | None, groups: tuple[str, ...] = ("all",)
) -> list[SSHTarget]:
    """The hosts of ``--host`` and ``--inventory`` (those of ``groups`` in it), in order."""
    from hivemind.remote import load_inventory, parse_target

    targets = [parse_target(h) for h in hosts or []]
    if inventory:
        loaded = load_inventory(inventory)
        if groups == ("all",):
            targets += loaded.targets()
        else:
            targets += [h.target for h in loaded.hosts if set(h.groups) & set(groups)]
        if not targets:
            fail(f"no host of {inventory} is in {', '.join(groups)}", 2)
    return targets


def ssh_options(
    key_file: Path | None,
    known_hosts: Path | None,
    insecure_host_key: bool,
    remote_hivemind: str,
) -> SSHOptions:
    """The :class:`~hivemind.remote.SSHOptions` of a command's parsed SSH flags, built the
    same way for every command that reaches other hosts."""
    from hivemind.remote import SSHOptions

    return SSHOptions(
        key_file=key_file,
        known_hosts=known_hosts,
        insecure_host_key=insecure_host_key,
        hivemind=remote_hivemind,
    )


def settings(**overrides: Any) -> Settings:
    return load_settings(OPTIONS.config, **overrides)


def client(settings_: Settings | None = None) -> Client:
    s = settings_ or settings()
    return Client(s.client_address, load_token(s.client_address), security=client_security(s))


def fail(message: str, code: int = 1) -> NoReturn:
    # The message is plain text: an error may quote "[/DB]" or a path in brackets.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn expected failures into one line and an exit code; tracebacks only with --debug."""
    try:
        yield
    except HivemindError as exc:
        if OPTIONS.debug:
            traceback.print_exc()
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command body in :func:`errors`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with errors():
            return fn(*args, **kwargs)

    return wrapper


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def read_password(prompt: str) -> str:
    """A password typed at the terminal (not echoed), or, when stdin is piped, its next line:
    `echo "$PW" | hivemind login alice` reads the pipe, with no GetPassWarning."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    if not line:
        fail(f"no password on stdin (asked: {prompt.strip()!r})", 2)
    password = line.rstrip("\r\n")
    if not password:
        fail("the password read from stdin is empty", 2)
    return password


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def short_when(ts: float) -> str:
    """Time of day for today's times, else the date: table cells on an 80-column terminal."""
    if not ts:
        return "-"
    moment = datetime.fromtimestamp(ts)
    return moment.strftime("%H:%M:%S" if moment.date() == datetime.now().date() else "%Y-%m-%d")


STATUS_STYLE = {
    TaskState.QUEUED.value: "yellow",
    TaskState.RUNNING.value: "cyan",
    TaskState.SUCCEEDED.value: "green",
    TaskState.FAILED.value: "red",
    TaskState.TIMEOUT.value: "red",
    TaskState.CANCELLED.value: "magenta",
    "online": "green",
    "lost": "red",
    "offline": "dim",
}


def styled(status: str) -> str:
    style = STATUS_STYLE.get(status, "white")
    return f"[{style}]{status}[/]"
