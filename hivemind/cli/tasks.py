"""Task commands: submit, tasks, task show|logs|result|cancel, workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from hivemind import tuning
from hivemind.cli.common import (
    client,
    command,
    console,
    fail,
    print_json,
    settings,
    short_when,
    styled,
    to_dict,
    when,
)
from hivemind.client import Client, function_spec, result_value
from hivemind.proto import hivemind_pb2 as pb
from hivemind.states import TaskState, is_terminal
from hivemind.submission import TaskOptions, load_items, parse_arg, prepare_bundle

TASK_ID_ARGUMENT = typer.Argument(
    ..., metavar="TASK_ID", help="The task's id, or any unique prefix of it (4+ characters)."
)

task_app = typer.Typer(help="One task: show, logs, result, cancel.", no_args_is_help=True)


def _render_task_table(tasks: list[pb.Task]) -> None:
    table = Table(show_edge=False)
    # Ids are never cut (they are what the other commands take), and nothing is ellipsised:
    # a narrow terminal folds a name onto more lines instead.
    owners = {t.owner for t in tasks}
    table.add_column("ID", no_wrap=True, min_width=max((len(t.id) for t in tasks), default=2))
    table.add_column("NAME", overflow="fold")
    table.add_column("STATUS", no_wrap=True, min_width=max(len(s.value) for s in TaskState))
    if len(owners) > 1:
        table.add_column("OWNER", overflow="fold")
    table.add_column("WORKER", overflow="fold")
    table.add_column("TRY", no_wrap=True)
    table.add_column("DONE", no_wrap=True, justify="right")
    table.add_column("CREATED", no_wrap=True)
    for t in tasks:
        table.add_row(
            t.id,
            escape(t.spec.name),
            styled(t.status),
            *([escape(t.owner)] if len(owners) > 1 else []),
            escape(t.worker) or "-",
            str(t.attempt),
            f"{t.progress * 100:.0f}%",
            short_when(t.created_at),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(task_app, name="task")

    @app.command()
    @command
    def submit(
        target: str = typer.Argument(
            "",
            metavar="TARGET",
            help="A bundle (directory or .zip) or module:function.",
            show_default=False,
        ),
        arg: list[str] = typer.Option(
            [],
            "--arg",
            metavar="VALUE",
            show_default=False,
            help="A function argument, in order (repeatable): JSON if it parses, else text; "
            'a value opening with { [ or " must be valid JSON.',
        ),
        timeout: float | None = typer.Option(
            None,
            metavar="SECONDS",
            help="Seconds before the task is killed (default: task.json's, else TASK_TIMEOUT).",
        ),
        retries: int | None = typer.Option(
            None,
            metavar="N",
            help="Requeues after a lost worker (default: task.json's, else DEFAULT_RETRIES).",
        ),
        cpu: int | None = typer.Option(None, metavar="N", help="Cores the worker must have."),
        memory: int | None = typer.Option(
            None, metavar="MIB", help="MiB of RAM the worker must have."
        ),
        gpu: int | None = typer.Option(None, metavar="N", help="GPUs the worker must have."),
        label: list[str] = typer.Option(
            [],
            "--label",
            metavar="LABEL",
            show_default=False,
            help="A label the worker must have (repeatable).",
        ),
        priority: int | None = typer.Option(
            None, metavar="N", help="Higher runs first (default: task.json's, else 0)."
        ),
        name: str = typer.Option(
            "", metavar="TEXT", show_default=False, help="A name to show in listings."
        ),
        map_function: str = typer.Option(
            "",
            "--map",
            metavar="MODULE:FUNCTION",
            show_default=False,
            help="A function to call once per item of --items.",
        ),
        items: Path | None = typer.Option(
            None, metavar="FILE", help="JSONL file: one call's argument per line, for --map."
        ),
        wait: bool = typer.Option(False, "--wait", help="Wait for the results."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Submit a bundle, a function call, or (--map) one call per item of a JSONL file."""
        s = settings()
        # Not given is 0 (-1 for retries) in a TaskSpec: the node pool, or task.json, decides.
        options: dict[str, Any] = dict(
            timeout=timeout or 0.0,
            retries=-1 if retries is None else retries,
            priority=priority or 0,
            cpu=cpu or 0,
            memory_mb=memory or 0,
            gpu=gpu or 0,
            labels=label,
        )
        with client(s) as c:
            if map_function:
                if items is None:
                    fail("--map needs --items FILE.jsonl", 2)
                specs = [
                    function_spec(map_function, [item], name=name, **options)
                    for item in load_items(items)
                ]
            elif ":" in target and not Path(target).exists():
                specs = [function_spec(target, [parse_arg(a) for a in arg], name=name, **options)]
            elif target:
                specs = [_bundle_spec(c, Path(target), s.max_task_data_size, name, options)]
            else:
                fail("give a bundle path, module:function, or --map with --items", 2)
            if not wait:
                ids = c.submit(specs)
                if as_json:
                    print_json({"task_ids": ids})
                else:
                    for task_id in ids:
                        console.print(f"submitted [bold]{task_id}[/]")
                return
            # Quick tasks come back with the submit call itself; the rest get a progress bar.
            tasks = c.submit_and_wait(specs, timeout=tuning.SUBMIT_QUICK_WAIT)
            if not all(is_terminal(t.status) for t in tasks):
                tasks = _wait_all(c, tasks)
        failed = [t for t in tasks if t.status != TaskState.SUCCEEDED]
        if as_json:
            print_json([{**to_dict(t), "result": result_value(t)} for t in tasks])
        elif map_function:
            for t in tasks:
                console.print_json(t.result_json) if t.result_json else console.print(
                    f"{t.id}: {styled(t.status)} {escape(t.error_message)}"
                )
        else:
            for t in tasks:
                console.print(f"{t.id}: {styled(t.status)} {escape(t.error_message)}")
                if t.result_json:
                    console.print_json(t.result_json)
        if failed:
            raise typer.Exit(1)

    @app.command("tasks")
    @command
    def list_tasks(
        status: str = typer.Option(
            "",
            metavar="STATE",
            show_default=False,
            help="Only tasks in this state: " + ", ".join(s.value for s in TaskState) + ".",
        ),
        all_users: bool = typer.Option(False, "--all", help="Every user's tasks (admins)."),
        limit: int = typer.Option(100, metavar="N", help="How many, newest first."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List tasks, newest first."""
        with client() as c:
            tasks = c.list(status.upper(), limit, all_users)
        if as_json:
            print_json([to_dict(t) for t in tasks])
        else:
            _render_task_table(tasks)

    @app.command()
    @command
    def workers(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """List registered workers with their heartbeat age and load."""
        with client() as c:
            found = c.workers()
        if as_json:
            print_json([to_dict(w) for w in found])
            return
        table = Table(show_edge=False)
        for column in (
            "NODE",
            "STATUS",
            "HEARTBEAT",
            "CPU",
            "MEM MiB",
            "GPU",
            "LABELS",
            "RUNNING",
            "LOAD",
        ):
            table.add_column(column)
        now = time.time()
        for w in found:
            age = f"{now - w.last_heartbeat:.1f}s ago" if w.last_heartbeat else "-"
            table.add_row(
                escape(w.node_id),
                styled(w.status),
                age,
                str(w.resources.cpu),
                str(w.resources.memory_mb),
                str(w.resources.gpu),
                escape(",".join(w.resources.labels)) or "-",
                f"{len(w.running_task_ids)}/{w.resources.capacity}",
                f"{w.metrics.load1:.2f}",
            )
        console.print(table)

    @task_app.command("show")
    @command
    def show(
        task_id: str = TASK_ID_ARGUMENT, as_json: bool = typer.Option(False, "--json")
    ) -> None:
        """A task's state, requirements and attempt history."""
        with client() as c:
            t = c.get(task_id)
        if as_json:
            print_json({**to_dict(t), "result": result_value(t)})
            return
        console.print(f"[bold]{t.id}[/] {escape(t.spec.name)}  {styled(t.status)}")
        console.print(
            f"owner {escape(t.owner)}  worker {escape(t.worker) or '-'}  "
            f"attempt {t.attempt}  progress {t.progress * 100:.0f}% "
            f"{escape(t.progress_message)}"
        )
        console.print(
            f"created {when(t.created_at)}  started {when(t.start_time)}  "
            f"finished {when(t.finished_at)}  timeout {t.spec.timeout:.0f}s  "
            f"retries {t.spec.retries}"
        )
        if t.error_message:
            console.print(f"[red]error:[/] {escape(t.error_message)}")
        if t.unschedulable_reason:
            console.print(f"[yellow]waiting:[/] {escape(t.unschedulable_reason)}")
        if t.result_json:
            console.print_json(t.result_json)
        for e in t.history:
            console.print(
                f"  {when(e.at)}  #{e.attempt} {e.event:<10} {escape(e.worker)} {escape(e.detail)}"
            )

    @task_app.command("logs")
    @command
    def logs(
        task_id: str = TASK_ID_ARGUMENT, follow: bool = typer.Option(False, "--follow", "-f")
    ) -> None:
        """Print a task's log; --follow keeps printing until it ends."""
        with client() as c:
            for text in c.stream_log(task_id, follow):
                console.out(text, end="", highlight=False)

    @task_app.command("result")
    @command
    def result(
        task_id: str = TASK_ID_ARGUMENT,
        output: Path = typer.Option(
            Path("."), "-o", "--output", metavar="DIR", help="Where to unpack it."
        ),
    ) -> None:
        """Print a function's result, or unpack a bundle's output/ files into -o DIR."""
        with client() as c:
            t = c.get(task_id)
            if not is_terminal(t.status):
                fail(f"task {t.id} is {t.status}; no result yet")
            if t.result_json:
                console.print_json(t.result_json)
            elif t.has_result_archive:
                dest = c.fetch_result(t.id, output)
                console.print(f"result of {t.id} unpacked into {dest}")
            else:
                fail(
                    f"task {t.id} is {t.status} and has no result "
                    f"{('(' + t.error_message + ')') if t.error_message else ''}"
                )

    @task_app.command("cancel")
    @command
    def cancel(task_id: str = TASK_ID_ARGUMENT) -> None:
        """Cancel a queued or running task."""
        with client() as c:
            t = c.cancel(task_id)
            if t.status == TaskState.RUNNING:
                t = c.wait([t.id], timeout=10)[0]
        console.print(f"{t.id}: {styled(t.status)}")


def _bundle_spec(
    c: Client, path: Path, max_size: int, name: str, options: dict[str, Any]
) -> pb.TaskSpec:
    asked = TaskOptions(name=name, **{**options, "labels": tuple(options["labels"])})
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        console=console,
        transient=True,
    ) as bar:
        job = bar.add_task("packing", total=None)

        def uploaded(sent: int, total: int) -> None:
            bar.update(job, description="uploading", completed=sent, total=total)

        return prepare_bundle(
            c, path, asked, max_size, fallback_name=path.name, on_progress=uploaded
        )


def _wait_all(c: Client, tasks: list[pb.Task]) -> list[pb.Task]:
    ids = [t.id for t in tasks]
    done = {t.id: t for t in tasks if is_terminal(t.status)}
    with Progress(
        TextColumn("waiting"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=console,
        transient=True,
    ) as bar:
        job = bar.add_task("wait", total=len(ids))
        while len(done) < len(ids):
            pending = [i for i in ids if i not in done][:1000]
            for t in c.wait(pending, timeout=10):
                if is_terminal(t.status):
                    done[t.id] = t
            bar.update(job, completed=len(done))
    return [done[i] for i in ids]
