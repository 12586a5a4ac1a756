"""The Dramatiq actors: thin functions that take ids, call ``storage`` and the provider.

Import them through ``pipeline.app.bootstrap``, which sets the broker they bind to.
"""
