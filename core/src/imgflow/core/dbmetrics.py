"""MongoDB commands counted per process, by name, as a Prometheus counter: what the job path costs
the database (``imgflow_mongodb_commands_total{command}`` on the API's and the worker's /metrics;
bench/e2e.py divides it by the jobs it ran)."""

from __future__ import annotations

from prometheus_client import Counter
from pymongo import monitoring

COMMANDS = Counter(
    "imgflow_mongodb_commands_total", "MongoDB commands this process sent, by command name", ["command"]
)


class CommandCounter(monitoring.CommandListener):
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        COMMANDS.labels(event.command_name).inc()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass
