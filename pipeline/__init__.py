"""Wiring: broker, middleware, schedule, archiver and the command line."""
