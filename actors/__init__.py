"""The Dramatiq actors: thin functions that take ids, call ``storage`` and the provider.

Importing them builds nothing: each module declares its actors
(``pipeline.core.declare``) and ``pipeline.bootstrap`` binds the actors of
``MODULES`` to the process's broker.
"""

from actors import delivery_rates, email_batches, email_groups, emails, fan_out, inventory, maintenance, webhooks

#: Every module whose actors make up the system.
MODULES = (emails, email_batches, email_groups, fan_out, inventory, webhooks, maintenance, delivery_rates)
