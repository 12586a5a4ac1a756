"""``docker-compose.yml`` closed by default: services published on this host only, no password written in it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
#: The one port meant for the world: serve's webhook intake (behind the TLS proxy).
PUBLIC = {("serve", "8000:8000"), ("serve-cluster", "8001:8000")}


def services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_postgres_rabbitmq_and_the_rest_publish_on_127_0_0_1_only() -> None:
    """PostgreSQL, RabbitMQ and its management UI were published on every interface with minalesh:minalesh."""
    for name, service in services().items():
        for port in service.get("ports", []):
            if (name, port) not in PUBLIC:
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_no_password_has_a_default() -> None:
    text = COMPOSE.read_text()
    for variable in ("POSTGRES_PASSWORD", "RABBITMQ_DEFAULT_PASS"):
        for value in re.findall(rf"{variable}: (.*)", text):
            assert value.startswith("${") and ":?" in value, f"{variable}: {value}"
    for url in re.findall(r"(?:postgresql|amqp)://[^\s]*", text.split("# --- The `cluster` profile")[0]):
        password = url.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
        assert password.startswith("${") and ":?" in password, url
