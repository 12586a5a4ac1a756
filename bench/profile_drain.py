"""Where one drain of this project spends its time, per email: py-spy on the shipped workers.

Starts the shipped processes (``worker -p 2 -t 8``, ticker, archiver; no pacing, a
fake Resend with no limit) and drains ``--emails`` emails three times: without a
profiler (CPU per email of each process, from ``/proc/<pid>/stat``, and of this
database's PostgreSQL backends), then while py-spy samples both worker processes

* ``--gil``: only the thread holding the GIL, i.e. the Python CPU the processes spend;
* ``--idle``: every thread, i.e. the wall time of the 16 worker threads, waits included
  (shares of it: py-spy cannot sample ~35 threads a process at full rate; the total is
  16 threads × the drain's time ÷ emails).

Each sample of a thread processing a message is put in the step of ``deliver`` it is
in (the pool's pre-ping, COMMIT, start_attempt, render, limiter, provider request,
mark_sent, logging, the session and pool) or in Dramatiq's own work around the actor
(decoding, middleware, acking), and split into "waiting" (its innermost frame waits
on a socket, a lock, the database) and "running" (in the wall time: or waiting for
the GIL).

    python -m bench.profile_drain [--emails 3000] [--rate 200] [--keep DIR] [--per-email]

``--per-email``: the per-email path instead (``EMAIL_PER_REQUEST=1``, the limiter on, a
fake advertising a limit far above the load), as ``bench.throughput``'s "1 per request".

Needs py-spy (``pip install py-spy``, in the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import contenders, runs
from bench.harness import shipped
from bench.harness.fake_resend import FakeResend


def frame(function: str, path: str) -> re.Pattern[str]:
    """A py-spy frame, ``Class.function (path:line)``, of ``function`` in a file ending in ``path``."""
    return re.compile(rf"^(?:[\w<>]+\.)*{function} \((?:.*/)?{re.escape(path)}:")


#: Steps of ``actors.emails.deliver``, found by a frame of the stack (first match wins).
STEPS = (
    ("pool pre-ping (SELECT 1 per checkout)", frame("do_ping", "sqlalchemy/dialects/postgresql/_psycopg_common.py")),
    ("COMMIT", frame("do_commit", "sqlalchemy/engine/default.py")),
    ("start_attempt (UPDATE ... RETURNING)", frame("start_attempt", "storage/leases.py")),
    ("render", frame("render", "pipeline/core/rendering.py")),
    ("limiter.acquire (slot UPDATE)", frame("acquire", "pipeline/providers/pacing.py")),
    ("provider request (SDK + HTTP)", frame("send", "pipeline/providers/resend.py")),
    ("limiter.observe", frame("observe", "pipeline/providers/pacing.py")),
    ("mark_sent (UPDATE)", frame("mark_sent", "storage/emails.py")),
    ("logging", re.compile(r"\((?:.*/)?logging/__init__\.py:")),
    ("session and pool: begin, checkout, close", re.compile(r"\((?:.*/)?sqlalchemy/")),
)
#: Leaf frames that mean the thread is waiting (a socket, a lock, a sleep), not running Python.
WAITING = re.compile(
    r"^(?:[\w<>]+\.)*(recv_into|recv|readinto|readline|_recv|wait|acquire|select|poll|sleep|execute|connect|"
    r"sendall|send|_read_status|getresponse|create_connection|_internal_poll|get|do_execute|cursor_execute|"
    r"do_ping|do_commit|do_rollback) \("
)
#: Threads of the shipped worker command: ``--processes 2 --threads 8``.
WORKER_THREADS = 16
DELIVER = frame("deliver", "actors/emails.py")
PROCESS_MESSAGE = frame("process_message", "dramatiq/worker.py")
MIDDLEWARE = re.compile(r"(^|\.)(before|after)_\w+ \(|(^|\.)emit_(before|after) \(")


def _frames(stack: str) -> list[str]:
    return stack.split(";")


def classify(stack: str) -> tuple[str, str] | None:
    """(step, running|waiting) of one sample of a thread at work on a message; None otherwise."""
    frames = _frames(stack)
    if not any(PROCESS_MESSAGE.match(frame) for frame in frames):
        return None
    leaf = frames[-1]
    state = "waiting" if WAITING.match(leaf) else "running"
    below_deliver = None
    for index, frame in enumerate(frames):
        if DELIVER.match(frame):
            below_deliver = frames[index + 1 :]
            break
    if below_deliver is None:
        outside = "Dramatiq middleware" if any(MIDDLEWARE.match(f) for f in frames) else "Dramatiq: message handling"
        return outside, state
    for step, pattern in STEPS:
        if any(pattern.search(frame) for frame in below_deliver):
            return step, state
    return "deliver: other", state


def worker_thread_state(stack: str) -> str:
    frames = _frames(stack)
    if any(PROCESS_MESSAGE.match(frame) for frame in frames):
        return "on a message"
    if any("dramatiq/worker.py" in frame and "WorkerThread.run (" in frame for frame in frames):
        return "worker thread, idle"
    return "other"


def read_raw(path: Path) -> Counter[str]:
    samples: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[stack] += int(count)
    return samples


def spy(pids: list[int], mode: str, rate: int, folder: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    beside = Path(sys.executable).with_name("py-spy")
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"
    started = []
    for pid in pids:
        output = folder / f"{mode}-{pid}.txt"
        argv = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--nonblocking"]
        argv += ["--output", str(output), f"--{mode}"]
        started.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), output))
    time.sleep(1.0)  # py-spy attaches
    return started


def stop_spies(spies: list[tuple[subprocess.Popen[bytes], Path]]) -> Counter[str]:
    samples: Counter[str] = Counter()
    for process, output in spies:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        samples += read_raw(output)
    return samples


def summarize(samples: Counter[str], title: str, *, per_email_ms: float | None, rate: int, emails: int) -> None:
    """Print the steps' shares of the samples of threads at work on a message, in ms per email.

    ``per_email_ms`` None: the samples are seconds of CPU (``--gil``: one sample a round, the
    GIL holder's), so a sample is worth ``1 / rate`` s. Otherwise the samples are shares of
    ``per_email_ms`` (``--idle``: py-spy drops whole rounds when ~35 threads a process are
    too many for its rate, so only shares are kept; the total comes from Little's law).
    """
    steps: Counter[tuple[str, str]] = Counter()
    threads: Counter[str] = Counter()
    for stack, count in samples.items():
        threads[worker_thread_state(stack)] += count
        found = classify(stack)
        if found is not None:
            steps[found] += count
    total = sum(steps.values())
    if total == 0:
        print(f"\n{title}: no samples")
        return
    unit = (per_email_ms / total) if per_email_ms is not None else 1000.0 / rate / emails
    print(f"\n{title}: {total * unit:.2f} ms per email")
    by_step: Counter[str] = Counter()
    for (step, _), count in steps.items():
        by_step[step] += count
    for step, count in by_step.most_common():
        waiting = steps[(step, "waiting")]
        print(
            f"  {step:40} {count * unit:7.2f} ms  {100 * count / total:5.1f}%"
            f"   (waiting {waiting * unit:.2f}, running {(count - waiting) * unit:.2f})"
        )
    print("  samples by thread state: " + ", ".join(f"{k} {v}" for k, v in threads.most_common()))


class CpuClock:
    """CPU seconds (user + system) of the fleet's processes, this one (the fake) and the run's PostgreSQL backends."""

    def __init__(self, pids: dict[str, int], database_url: str) -> None:
        self.pids = pids
        self.database_url = database_url
        self.before = self.read()

    def read(self) -> dict[str, float]:
        seconds = {name: runs.cpu_seconds(pid) for name, pid in self.pids.items()}
        seconds["PostgreSQL backends"] = sum(
            runs.cpu_seconds(pid) for pid in runs.backends(self.database_url) if Path(f"/proc/{pid}").exists()
        )
        return seconds

    def per_email_ms(self, emails: int) -> dict[str, float]:
        after = self.read()
        return {name: (after[name] - self.before.get(name, 0.0)) * 1000.0 / emails for name in after}


def drain(run: runs.Run, provider: FakeResend, pids: dict[str, int], emails: int, tag: str) -> tuple[float, str]:
    """Insert ``emails`` and wait for them at the fake; (seconds, CPU per email of each process)."""
    clock = CpuClock(pids, run.database_url)
    sent_before = provider.delivery_count()
    started = time.monotonic()
    runs.insert_emails(run.database_url, emails, tag=tag)
    runs.wait_deliveries(provider, sent_before + emails)
    elapsed = time.monotonic() - started
    cpu = clock.per_email_ms(emails)
    return elapsed, ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items()) + f" (total {sum(cpu.values()):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--keep", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument(
        "--per-email",
        action="store_true",
        help="one email per request (EMAIL_PER_REQUEST=1), the limiter on at a limit far above the load",
    )
    options = parser.parse_args()
    folder = options.keep or Path(tempfile.mkdtemp(prefix="bench-profile-"))
    folder.mkdir(parents=True, exist_ok=True)
    if options.per_email:
        fake = FakeResend(api_key="re_bench", advertised_limit=contenders.FAR_ABOVE_THE_LOAD)
        shape = {"EMAIL_PER_REQUEST": "1"}
    else:
        fake = FakeResend(api_key="re_bench")
        shape = {"EMAIL_RATE_LIMIT_PER_SECOND": "0"}
    with runs.fresh_run() as run, fake as provider:
        env = shipped.default_environment(run.services, provider, **shape)
        with shipped.fleet(env, folder) as fleet:
            runs.wait_ticker_listening(folder)
            run.queues.wait_consumers("emails", 2)
            workers = runs.children(fleet.processes["worker-0"].pid)
            pids = {f"worker process {n}": pid for n, pid in enumerate(workers, start=1)}
            pids.update({name: process.pid for name, process in fleet.processes.items() if name != "worker-0"})
            pids["fake Resend (this process)"] = os.getpid()
            for number, mode in enumerate((None, "gil", "idle"), start=1):
                spies = spy(workers, mode, options.rate, folder) if mode else []
                elapsed, cpu = drain(run, provider, pids, options.emails, f"profile{number}-")
                samples = stop_spies(spies)
                print(f"\n=== drain {number}, py-spy {'--' + mode if mode else 'not attached'}: "
                      f"{options.emails} emails in {elapsed:.1f}s ({options.emails / elapsed:.0f}/s)")
                print(f"CPU ms per email: {cpu}")
                if mode:
                    title = (
                        "Python CPU of the worker processes (the GIL holder)"
                        if mode == "gil"
                        else "wall time of a worker thread (16 threads x the drain's time / emails)"
                    )
                    # Little's law: 16 threads kept busy by a full queue for the drain.
                    wall = None if mode == "gil" else WORKER_THREADS * elapsed * 1000.0 / options.emails
                    summarize(samples, title, per_email_ms=wall, rate=options.rate, emails=options.emails)
            provider.stop()
    print(f"\nraw stacks in {folder} (flame graphs: py-spy record --format flamegraph)")


if __name__ == "__main__":
    main()
