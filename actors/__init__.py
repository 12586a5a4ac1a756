"""The Dramatiq actors: thin functions that take ids, call ``storage`` and the provider.

``pipeline.bootstrap.bootstrap`` binds them to the process's broker; importing them
earlier declares them on a placeholder, so tests and hosts may import freely.
"""

from pipeline.bootstrap import prepare_declarations

prepare_declarations()
