"""Sending at the provider's limit, in the shape we ship: pickup, and transactional behind bulk.

Runs the README's production processes (``worker --processes 2 --threads 8``, the
ticker, the archiver) on default settings, on a database and vhost of its own,
against a fake Resend enforcing 2 requests a second, and prints:

* pickup: an email inserted by plain SQL into an idle system, until its request
  reaches the provider (samples spaced by more than one slot of the rate, so the
  figure is the pickup, not the wait for a free slot);
* transactional behind bulk: 5,000 bulk emails draining at the limit, and a
  transactional email inserted by SQL every second, until each reaches the provider
  (5,000 bulk emails are 50 batch requests, about 28 s at 1.8 requests/s).

    python -m bench.sending [--samples 20] [--bulk 5000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--bulk", type=int, default=5000)
    options = parser.parse_args()
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
