"""``minalesh-workers serve``'s HTTP app: the webhook intake, health, the shop's cron endpoints, the ops API.

``app`` assembles the routes and runs them under uvicorn; ``auth`` is who may call
what; ``health``, ``cron``, ``ops_api`` (reads) and ``ops_actions`` (replay, purge,
pause) are the routes; ``schemas`` their request and response bodies.
"""
