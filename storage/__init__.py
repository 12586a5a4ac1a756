"""Schema, migrations and every SQL statement of minalesh-workers.

Nothing in this package knows about Dramatiq or RabbitMQ: functions take an
explicit SQLAlchemy ``Session`` owned by the caller, so the same statements serve
the actors, the CLI, the host application's Python API and the tests.
"""
