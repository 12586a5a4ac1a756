"""Everything around the actors, in two layers.

Below the actors (they import these; these import no actor):

* ``pipeline.core``: settings, the error tree, the process runtime, the email
  provider boundary (``mailer``), rendering and templates, logging, the audit
  trail, and the actor declarations (``declare``) the actor modules use;
* ``pipeline.middleware``: the Dramatiq middleware (backoff, long delays, poison
  messages) and the item-hooks protocol they speak to the actors' rows through.

Above the actors (entry points; these import the actors): ``bootstrap`` (broker,
middleware, actors), ``entry`` (what ``dramatiq`` loads in a worker process),
``ticker``, ``archiver`` and its ``alerts``, ``dlq`` (replay and inspection),
``stats``, ``webhook_server``, ``dev``, ``api`` (the Python host API), the ``web``
package (``serve``'s app: health, cron endpoints, the ops API) and the ``cli``
package, one module per command group.
"""
