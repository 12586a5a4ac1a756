"""Sending in the shape we ship: a shop's peak as it arrives, and at the provider's limit.

Runs the README's production processes (``worker --processes 2 --threads 8``, the
ticker, the archiver) on default settings, each part on a database and vhost of its own.

The peak as it arrives (issue 21's goal: at 50/s p50 <= 15 ms and p99 <= 50 ms, at
200/s p99 <= 100 ms): a fake that advertises a limit far above the load (the limiter on,
never binding) and enforces none; emails inserted one INSERT at a time, each its own
transaction, at ``--peak-rates`` a second for ``--peak-seconds`` each, and the time from
each INSERT's commit to the arrival of its request at the provider (batches form by
themselves when emails arrive faster than one request takes).

Then against a fake Resend enforcing 2 requests a second:

* pickup: an email inserted by plain SQL into an idle system, until its request
  reaches the provider (samples spaced by more than one slot of the rate, so the
  figure is the pickup, not the wait for a free slot);
* transactional behind bulk: 5,000 bulk emails draining at the limit, and a
  transactional email inserted by SQL every second, until each reaches the provider
  (5,000 bulk emails are 50 batch requests, about 28 s at 1.8 requests/s).

    python -m bench.sending [--samples 20] [--bulk 5000] [--peak-rates 50,200] [--peak-seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.contenders import FAR_ABOVE_THE_LOAD
from bench.harness import FakeResend, services, shipped
from bench.harness.waiting import wait_until

#: Spacing of pickup samples: more than one slot at the default 1.8 requests/s.
PICKUP_SPACING_SECONDS = 1.0
#: Spacing of the transactional emails sent through the bulk drain.
TRANSACTIONAL_SPACING_SECONDS = 1.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(share * (len(ordered) - 1))), len(ordered) - 1)]


def arrival(provider: FakeResend, address: str, started: float) -> float:
    request = wait_until(lambda: [r for r in provider.requests if address in r.to], timeout=60, what=address)[0]
    return request.arrived_at - started


def pickup(provider: FakeResend, sessions: object, samples: int) -> list[float]:
    took = []
    for n in range(samples):
        time.sleep(PICKUP_SPACING_SECONDS)
        address = f"pickup{n}-{time.time_ns()}@bench.test"
        started = time.monotonic()
        shipped.insert_emails(sessions, [address])  # type: ignore[arg-type]
        took.append(arrival(provider, address, started))
    return took


def behind_bulk(provider: FakeResend, sessions: object, samples: int, bulk: int) -> tuple[list[float], float]:
    shipped.insert_emails(sessions, [f"bulk{n}@bench.test" for n in range(bulk)], priority="bulk")  # type: ignore[arg-type]
    wait_until(lambda: len(provider.deliveries) >= 10, timeout=60, what="the bulk drain")
    drain_started, drained_before = time.monotonic(), len(provider.deliveries)
    took = []
    for n in range(samples):
        time.sleep(TRANSACTIONAL_SPACING_SECONDS)
        address = f"urgent{n}-{time.time_ns()}@bench.test"
        started = time.monotonic()
        shipped.insert_emails(sessions, [address])  # type: ignore[arg-type]
        took.append(arrival(provider, address, started))
    rate = (len(provider.deliveries) - drained_before) / (time.monotonic() - drain_started)
    return took, rate


def arrivals(provider: FakeResend) -> dict[str, float]:
    """When each recipient's first accepted request arrived at the fake (monotonic seconds)."""
    found: dict[str, float] = {}
    for request in provider.requests:
        if request.method == "POST" and request.status == 200:
            for address in request.to:
                found.setdefault(address, request.arrived_at)
    return found


def peak(provider: FakeResend, sessions: object, per_second: float, seconds: float) -> list[float]:
    """One INSERT (its own transaction) every 1/``per_second`` s for ``seconds``; INSERT-to-provider times.

    Each email's clock starts when its INSERT has committed (what the shop's request waited
    for); the schedule is kept by absolute times, so a slow INSERT does not slow the rate.
    """
    committed: dict[str, float] = {}
    count = int(per_second * seconds)
    tag = time.time_ns()
    begin = time.monotonic()
    for n in range(count):
        due = begin + n / per_second
        time.sleep(max(due - time.monotonic(), 0.0))
        address = f"peak{per_second:g}-{tag}-{n}@bench.test"
        shipped.insert_emails(sessions, [address])  # type: ignore[arg-type]
        committed[address] = time.monotonic()
    wait_until(lambda: set(committed) <= set(arrivals(provider)), timeout=60, what=f"the peak at {per_second:g}/s")
    arrived = arrivals(provider)
    return [arrived[address] - at for address, at in committed.items()]


def peaks(rates: list[float], seconds: float) -> dict[float, list[float]]:
    """The shipped fleet on defaults, a fake far above the load; each rate's latencies, after a warm-up."""
    run = services.create()
    try:
        with FakeResend(api_key="re_bench", advertised_limit=FAR_ABOVE_THE_LOAD) as provider:
            env = shipped.default_environment(run, provider)
            sessions = shipped.sessions_of(run)
            folder = Path(tempfile.mkdtemp(prefix="bench-peak-"))
            with shipped.fleet(env, folder):
                wait_until(lambda: "listening" in (folder / "ticker.log").read_text(), timeout=30, what="wake-up")
                # Each worker process's first request goes alone and paces the fleet from its answer:
                # a start-up cost, not the peak's. Warm both processes and their connections first.
                peak(provider, sessions, 20, 2)
                return {rate: peak(provider, sessions, rate, seconds) for rate in rates}
    finally:
        services.destroy(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--bulk", type=int, default=5000)
    parser.add_argument("--peak-rates", default="50,200", help="emails/s of the peaks as they arrive ('': skip)")
    parser.add_argument("--peak-seconds", type=float, default=10.0)
    parser.add_argument("--skip-limited", action="store_true", help="only the peaks")
    options = parser.parse_args()
    if options.peak_rates:
        rates = [float(rate) for rate in options.peak_rates.split(",")]
        measured = peaks(rates, options.peak_seconds)
        print(f"the peak as it arrives: defaults, worker -p 2 -t 8, a limit far above the load, "
              f"one INSERT at a time for {options.peak_seconds:g}s; INSERT committed -> request at the provider")
        for rate, took in measured.items():
            print(f"  {rate:g}/s ({len(took)} emails): p50 {percentile(took, 0.5) * 1000:.1f} ms  "
                  f"p99 {percentile(took, 0.99) * 1000:.1f} ms  max {max(took) * 1000:.1f} ms")
    if options.skip_limited:
        return
    run = services.create()
    try:
        with FakeResend(api_key="re_bench", max_requests_per_second=2) as provider:
            env = shipped.default_environment(run, provider)
            sessions = shipped.sessions_of(run)
            folder = Path(tempfile.mkdtemp(prefix="bench-sending-"))
            with shipped.fleet(env, folder):
                wait_until(lambda: "listening" in (folder / "ticker.log").read_text(), timeout=30, what="wake-up")
                picked = pickup(provider, sessions, options.samples)
                urgent, bulk_rate = behind_bulk(provider, sessions, options.samples, options.bulk)
            print(f"provider limit 2 requests/s, defaults, worker -p 2 -t 8; {options.samples} samples each")
            print(f"pickup (SQL insert -> provider): p50 {percentile(picked, 0.5):.3f}s  "
                  f"p95 {percentile(picked, 0.95):.3f}s  max {max(picked):.3f}s")
            print(f"transactional behind {options.bulk} bulk: p50 {percentile(urgent, 0.5):.3f}s  "
                  f"p95 {percentile(urgent, 0.95):.3f}s  max {max(urgent):.3f}s")
            print(f"emails/s delivered during the drain (bulk + transactional): {bulk_rate:.2f}; "
                  f"429s: {provider.count_429()}; median pickup {statistics.median(picked):.3f}s")
    finally:
        services.destroy(run)


if __name__ == "__main__":
    main()
