"""Renderings of a report that are plain text (the CLI draws the rich table itself)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from doctor.model import CheckResult, Report, Status

SYMBOLS = {
    Status.OK: "✔",
    Status.WARN: "⚠",
    Status.FAIL: "✘",
    Status.SKIP: "–",
    Status.ERROR: "‼",
}


def by_category(results: Iterable[CheckResult]) -> dict[str, list[CheckResult]]:
    groups: dict[str, list[CheckResult]] = {}
    for result in results:
        groups.setdefault(result.category, []).append(result)
    return groups


def summary_line(report: Report) -> str:
    counts = report.counts()
    parts = ", ".join(f"{counts[s.value]} {s.value}" for s in Status)
    return f"{report.host}: {parts} in {report.duration_s:.2f}s"


def evidence_text(result: CheckResult) -> str:
    return json.dumps(result.to_dict()["evidence"], ensure_ascii=False, sort_keys=True)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    """The report as Markdown, for pasting into a ticket."""
    lines = [
        f"## hivemind doctor: {report.host}",
        "",
        f"{summary_line(report)} (started {report.started_at})",
        "",
    ]
    for category, results in by_category(report.results).items():
        lines += [f"### {category}", "", "| | check | finding |", "|---|---|---|"]
        for result in results:
            lines.append(
                f"| {SYMBOLS[result.status]} {result.status.value} | `{result.id}` | "
                f"{_cell(result.finding.summary)} |"
            )
        lines.append("")
        for result in results:
            if result.status in (Status.WARN, Status.FAIL, Status.ERROR):
                lines.append(f"- **{result.id}** ({result.guide})")
                lines.append(f"  - evidence: `{_cell(evidence_text(result))}`")
                if result.finding.fix:
                    lines.append(f"  - fix: `{_cell(result.finding.fix)}`")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
