"""The email providers, below the actors: they import this package, it imports no actor.

One concept per module:

* ``base``: the protocol every provider speaks and its neutral answers and errors;
* ``resend``, ``smtp``, ``outbox``: the providers (``mime``: the message SMTP and the outbox write);
* ``pacing``: the fleet's pace at one provider, its quota and outage pauses (``SendLimiter``);
* ``sending``: the one call of the actors, across the providers of EMAIL_PROVIDERS, with failover.

See docs/providers.md.
"""
