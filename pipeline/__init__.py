"""Everything around the actors, in layers.

Below the actors (they import these; these import no actor): ``pipeline.core``
(settings, errors, the process runtime, the provider boundary, pacing, alerts,
logging) and ``pipeline.middleware`` (Dramatiq's hooks: backoff, long delays,
poison messages, the log line per message).

Above the actors: ``pipeline.ops``, the operators' services (dead letters, stats)
that the CLI and the web app both call; ``pipeline.web``, ``serve``'s HTTP app;
``pipeline.cli``, one module per command group. The root holds only what a
process starts from: ``bootstrap``, ``entry`` (what ``dramatiq`` loads),
``worker_main``, ``ticker``, ``archiver``, ``dev`` and ``api`` (a host app's).
"""
