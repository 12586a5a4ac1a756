"""deploy/prometheus: the alert rules the issue asks for, in a rule file Prometheus accepts.

Structure is checked here always; ``promtool`` (Debian package ``prometheus``), when
installed, checks the rules and the configuration as Prometheus itself reads them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
#: The issue's four alerts: dead letters rising, oldest due email too old, sending paused, a job stopped.
REQUIRED = {
    "MinaleshDeadLettersRising",
    "MinaleshOldestDueEmailTooOld",
    "MinaleshSendingPaused",
    "MinaleshPeriodicJobStopped",
}
#: What the rules read: every one a gauge of pipeline.web.metrics.
GAUGES = {
    "MinaleshDeadLettersRising": "minalesh_dead_letters",
    "MinaleshOldestDueEmailTooOld": "minalesh_oldest_due_email_age_seconds",
    "MinaleshSendingPaused": "minalesh_send_paused",
    "MinaleshPeriodicJobStopped": "minalesh_periodic_job_last_success_timestamp_seconds",
    "MinaleshBounceRateNearLimit": "minalesh_email_bounce_rate",
    "MinaleshBounceRateAtLimit": "minalesh_email_bounce_rate",
    "MinaleshComplaintRateNearLimit": "minalesh_email_complaint_rate",
    "MinaleshComplaintRateAtLimit": "minalesh_email_complaint_rate",
}


def rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def test_the_four_alerts_are_there_each_explained() -> None:
    found = rules()
    assert REQUIRED <= set(found)
    for name, rule in found.items():
        assert rule["expr"].strip() and rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    for name, gauge in GAUGES.items():
        assert gauge in found[name]["expr"], name


def test_the_rate_alerts_warn_at_half_of_resends_limits_and_fire_at_them() -> None:
    found = rules()
    for name, threshold, severity in (
        ("MinaleshBounceRateNearLimit", ">= 0.02", "warning"),
        ("MinaleshBounceRateAtLimit", ">= 0.04", "critical"),
        ("MinaleshComplaintRateNearLimit", ">= 0.0004", "warning"),
        ("MinaleshComplaintRateAtLimit", ">= 0.0008", "critical"),
    ):
        assert threshold in found[name]["expr"] and found[name]["labels"]["severity"] == severity, name
        assert 'window="24h"' in found[name]["expr"], name


def test_prometheus_scrapes_serve_and_the_workers() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["minalesh-serve"]["metrics_path"] == "/metrics"
    assert jobs["minalesh-workers"]["dns_sd_configs"][0]["port"] == 9191
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
@pytest.mark.parametrize(
    "command",
    [("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml")],
    ids=["check", "fires-when-it-should"],
)
def test_promtool_accepts_the_rules_and_they_fire_when_they_should(command: tuple[str, str, str]) -> None:
    """``alerts_test.yml``: each of the four alerts silent just before its threshold and firing after it."""
    checked = subprocess.run(["promtool", *command], cwd=DEPLOY, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
