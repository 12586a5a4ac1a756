"""Issue 10's comparison, in one run: this project against the same pipeline written plainly.

For each contender (this project as shipped, this project one email per request with
the limiter on, plain Celery, plain Dramatiq, a no-op Dramatiq actor), ``--runs``
drains of ``--emails`` emails each, interleaved (A B C D A B C D …) so that the
machine's other load falls on all of them alike, each on a fresh database, vhost and
fake Resend (see ``bench.contenders``). Then, for this project alone: bulk emails
against a fake enforcing 2 requests/s, and the worker processes' memory after 10,000
and 50,000 emails.

Prints every figure, medians and ratios, and with ``--write`` puts them in the
generated block of ``docs/BENCHMARKS.md`` (the text around it is kept).

    python -m bench.throughput [--runs 3] [--emails 3000] [--write docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from bench import contenders
from bench.contenders import Limited, Memory
from bench.runs import ROOT, Disturbed, Drain

#: The contenders in the order each round runs them, with the unit of their figure.
CONTENDERS: dict[str, tuple[Callable[[int, Path], Drain], str]] = {
    "this project": (contenders.this_project, "emails/s"),
    "this project, 1 per request": (contenders.this_project_per_email, "emails/s"),
    "plain Celery": (contenders.plain_celery, "emails/s"),
    "plain Dramatiq": (contenders.plain_dramatiq, "emails/s"),
    "no-op Dramatiq": (contenders.noop, "messages/s"),
}
#: A run that a restart of RabbitMQ or PostgreSQL disturbed is measured again, this many times in all.
DISTURBED_TRIES = 3
#: The generated part of the benchmarks document lies between these lines.
BEGIN = "<!-- bench.throughput: generated, do not edit by hand -->"
END = "<!-- bench.throughput: end -->"


@dataclass
class Results:
    started: datetime
    drains: dict[str, list[Drain]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    disturbed: list[str] = field(default_factory=list)
    limited: Limited | None = None
    memory: Memory | None = None
    ended: datetime | None = None


def now() -> datetime:
    return datetime.now(timezone.utc)


def say(line: str) -> None:
    print(line, flush=True)


def attempt(what: str, results: Results, work: Callable[[], object]) -> object | None:
    """Run one measurement, again if a service restarted under it; a failure is recorded, the others go on."""
    for tries in range(1, DISTURBED_TRIES + 1):
        try:
            return work()
        except Disturbed as exc:
            results.disturbed.append(f"{what}: {exc}")
            say(f"  {what}: {exc}; measured again" if tries < DISTURBED_TRIES else f"  {what}: {exc}")
        except Exception as exc:
            results.failures.append(f"{what}: {type(exc).__name__}: {exc}")
            say(f"  {what} FAILED: {exc}")
            traceback.print_exc()
            return None
    results.failures.append(f"{what}: disturbed {DISTURBED_TRIES} times")
    return None


def run_rounds(results: Results, *, runs: int, emails: int, folder: Path) -> None:
    for number in range(1, runs + 1):
        for name, (drain, unit) in CONTENDERS.items():
            where = folder / f"run{number}-{name.replace(' ', '-')}"
            where.mkdir(parents=True)
            started = time.monotonic()
            result = attempt(f"{name}, run {number}", results, functools.partial(drain, emails, where))
            if isinstance(result, Drain):
                results.drains.setdefault(name, []).append(result)
                cpu = f"; CPU {result.cpu_ms:.2f} ms" if result.cpu_ms is not None else ""
                cpu += f" + PostgreSQL {result.postgres_ms:.2f} ms per item" if result.postgres_ms is not None else ""
                say(
                    f"run {number} {name:15} {result.per_second:8.1f} {unit}  "
                    f"({result.count} in {result.seconds:.2f}s{cpu}; run took {time.monotonic() - started:.0f}s)"
                )


def median(results: Results, name: str) -> float | None:
    drains = results.drains.get(name)
    return statistics.median(d.per_second for d in drains) if drains else None


# --- the report ------------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{cores} cores (`nproc`), {model}, {memory_kib / 1024 / 1024:.0f} GiB, {platform.platform()}"


def versions() -> str:
    names = ("dramatiq", "celery", "kombu", "pika", "resend", "sqlalchemy", "psycopg2-binary")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return f"Python {platform.python_version()}, " + ", ".join(found)


def revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return (git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def report(results: Results, options: argparse.Namespace) -> str:
    lines = [
        BEGIN,
        "",
        f"Measured {results.started:%Y-%m-%d %H:%M}–{results.ended:%H:%M} UTC on {machine()}; "
        f"commit {revision()}; {versions()}.",
        "",
        f"Command: `{' '.join(options.command)}`",
        "",
        f"### Throughput: {options.emails:,} emails per run, {options.runs} runs each, interleaved",
        "",
        "| contender | unit | " + " | ".join(f"run {n}" for n in range(1, options.runs + 1)) + " | median |",
        "| --- | --- | " + " | ".join("---:" for _ in range(options.runs)) + " | ---: |",
    ]
    for name, (_, unit) in CONTENDERS.items():
        drains = results.drains.get(name, [])
        cells = [f"{d.per_second:,.0f}" for d in drains] + ["failed"] * (options.runs - len(drains))
        middle = median(results, name)
        tail = f"**{middle:,.0f}**" if middle else "–"
        lines.append(f"| {name} | {unit} | " + " | ".join(cells) + f" | {tail} |")
    lines += [
        "",
        "CPU per email (medians of the runs), from `/proc/<pid>/stat` over the drain: the contender's own "
        "processes (workers and their children, and the fan-out: this project's ticker, the peers' fan-out "
        "command; this project's archiver too), and the PostgreSQL backends serving its database. Less "
        "sensitive than the rates to what else this machine runs.",
        "",
        "| contender | its processes, ms CPU per email | PostgreSQL, ms CPU per email |",
        "| --- | ---: | ---: |",
    ]
    for name in CONTENDERS:
        drains = results.drains.get(name, [])
        cpu = [d.cpu_ms for d in drains if d.cpu_ms is not None]
        postgres = [d.postgres_ms for d in drains if d.postgres_ms is not None]
        lines.append(
            f"| {name} | {statistics.median(cpu):.2f} |" if cpu else f"| {name} | – |"
        )
        lines[-1] += f" {statistics.median(postgres):.2f} |" if postgres else " – |"
    lines.append("")
    for name in ("this project", "this project, 1 per request"):
        ours = median(results, name)
        for peer in ("plain Celery", "plain Dramatiq"):
            theirs = median(results, peer)
            if ours and theirs:
                lines.append(f"- {name} / {peer}: **{ours / theirs:.2f}** (medians of {options.runs})")
    if results.limited is not None:
        limited = results.limited
        status = "all sent" if limited.delivered == limited.emails else f"stopped after {options.limited_window:.0f} s"
        lines += [
            "",
            f"### At the provider's limit: {limited.emails:,} bulk emails, a fake enforcing 2 requests/s",
            "",
            "This project as shipped (every setting at its default), emails inserted by SQL with "
            "`priority = 'bulk'`, timed from the INSERT to the last accepted request.",
            "",
            "| emails sent | seconds | emails/s | requests made | 429 answers |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {limited.delivered:,} of {limited.emails:,} ({status}) | {limited.seconds:.1f} | "
            f"{limited.per_second:.2f} | {limited.requests:,} | {limited.refused_429:,} |",
        ]
    if results.memory is not None:
        memory = results.memory
        lines += [
            "",
            f"### Worker memory: `worker -p 2 -t 8`, VmRSS summed over its {memory.processes} worker processes",
            "",
            "| emails sent | RSS (MiB) |",
            "| ---: | ---: |",
            *(f"| {count:,} | {kib / 1024:.1f} |" for count, kib in memory.samples.items()),
        ]
    if results.disturbed:
        lines += [
            "",
            "Runs measured again because RabbitMQ or PostgreSQL (shared with other work on this machine) "
            "restarted under them: " + "; ".join(results.disturbed) + ".",
        ]
    if results.failures:
        lines += ["", "### Failures", "", *(f"- {failure}" for failure in results.failures)]
    lines += ["", END]
    return "\n".join(lines)


def write(document: Path, block: str) -> None:
    """Replace the generated block of ``document`` (or add it at the end); keep the rest."""
    text = document.read_text() if document.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    document.parent.mkdir(parents=True, exist_ok=True)
    document.write_text(text)


# --- the run -----------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="drains per contender (default 3)")
    parser.add_argument("--emails", type=int, default=3000, help="emails (no-op: messages) per drain")
    parser.add_argument("--limited-emails", type=int, default=2000, help="bulk emails at the limit (0: skip)")
    parser.add_argument("--limited-window", type=float, default=30.0, help="seconds given to them at most")
    parser.add_argument(
        "--memory", default="10000,50000", help="emails after which worker RSS is read ('': skip)"
    )
    parser.add_argument("--write", type=Path, help="the benchmarks document to update")
    options = parser.parse_args(argv)
    options.command = ["python", "-m", "bench.throughput", *argv]
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    results = Results(started=now())
    say(f"bench.throughput: logs of every process in {folder}")
    run_rounds(results, runs=options.runs, emails=options.emails, folder=folder)
    if options.limited_emails:
        where = folder / "limited"
        where.mkdir()
        limited = attempt(
            "at the provider's limit",
            results,
            lambda: contenders.at_provider_limit(
                options.limited_emails, where, limit=2, window=options.limited_window
            ),
        )
        if isinstance(limited, Limited):
            results.limited = limited
            say(
                f"at 2 req/s: {limited.delivered} of {limited.emails} bulk emails in {limited.seconds:.1f}s "
                f"({limited.per_second:.2f}/s), {limited.requests} requests, {limited.refused_429} x 429"
            )
    if options.memory:
        where = folder / "memory"
        where.mkdir()
        checkpoints = [0, *(int(n) for n in options.memory.split(","))]
        memory = attempt("worker memory", results, lambda: contenders.worker_memory(checkpoints, where))
        if isinstance(memory, Memory):
            results.memory = memory
            say("worker RSS: " + ", ".join(f"{n:,} emails {kib / 1024:.1f} MiB" for n, kib in memory.samples.items()))
    results.ended = now()
    block = report(results, options)
    say("")
    say(block)
    if options.write:
        write(options.write, block)
        say(f"written to {options.write}")
    return 1 if results.failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
