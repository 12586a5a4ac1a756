"""Loopback stand-ins and per-run services, shared by the benchmarks and the tests.

The fake Resend (a loopback HTTP server that behaves like Resend at its real
limits), a database and RabbitMQ vhost of their own for each run (or, for the runs
that restart and kill them, a private PostgreSQL cluster and RabbitMQ node), the
production processes started as an operator starts them, and waiting on a condition. The
benchmarks import these and nothing of ``tests/``; the tests import them too.
"""

from bench.harness.fake_resend import FakeResend

__all__ = ["FakeResend"]
