"""The same email pipeline written plainly on other stacks, to compare this project against.

``celery_pipeline`` and ``dramatiq_pipeline`` do what a developer would write in an
afternoon: a fan-out claims due rows of ``email_queue`` (``FOR UPDATE SKIP LOCKED``)
and sends one task per email; the task SELECTs the row, sends it through the Resend
SDK with an idempotency key, and UPDATEs it to ``sent``. No leases taken back, no
attempt counting, no rate limit, no dead letters: what those cost is what the
comparison shows. ``noop`` is a Dramatiq actor that does nothing, the ceiling of the
broker and the worker on this machine. ``bench.throughput`` runs them side by side.
"""
