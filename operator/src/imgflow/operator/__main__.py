"""``imgflow-operator``: run the kopf operator for one namespace.

    imgflow-operator [--namespace NS] [--peering] [--verbose]

Connects with the in-cluster service account, or ``KUBECONFIG`` outside a cluster. Watches only
its namespace (``--namespace``, ``IMGFLOW_OPERATOR_NAMESPACE`` or the Downward API's
``POD_NAMESPACE``), serves kopf's liveness probe on ``:8080/healthz`` and Prometheus metrics on
``:9090/metrics``. Runs standalone unless ``--peering``: one replica is the intended deployment.
"""

from __future__ import annotations

from imgflow.core.sigterm import exit_on_sigterm

exit_on_sigterm()  # first: the imports below take seconds, and a pod may be removed meanwhile

import argparse
import asyncio
import logging
import threading

import kopf
from prometheus_client import start_http_server

from imgflow.core import logs
from imgflow.operator import handlers, kube
from imgflow.operator.settings import OperatorSettings

log = logging.getLogger("imgflow.operator")


async def run(
    settings: OperatorSettings,
    *,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run until signalled (or ``stop_flag`` is set); the handlers are those of ``handlers``."""
    assert handlers  # importing it registered the handlers
    namespace = settings.operator_namespace
    if not namespace:
        raise SystemExit(
            "imgflow-operator: no namespace to watch; set POD_NAMESPACE (the Downward API), "
            "IMGFLOW_OPERATOR_NAMESPACE or --namespace"
        )
    kube.load_config()
    if settings.operator_metrics_port:
        start_http_server(settings.operator_metrics_port)
    liveness = (
        f"http://0.0.0.0:{settings.operator_health_port}/healthz" if settings.operator_health_port else None
    )
    log.info("watching namespace %s", namespace)
    await kopf.operator(
        namespaces=[namespace],
        standalone=not settings.operator_peering,
        liveness_endpoint=liveness,
        memo=kopf.Memo(settings=settings),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="imgflow-operator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", help="namespace to watch (default: POD_NAMESPACE)")
    parser.add_argument("--peering", action="store_true", help="use kopf peering instead of --standalone")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    settings = OperatorSettings()
    overrides: dict[str, object] = {}
    if args.namespace:
        overrides["operator_namespace"] = args.namespace
    if args.peering:
        overrides["operator_peering"] = True
    settings = settings.model_copy(update=overrides)

    logs.configure(settings.log_format, logging.DEBUG if args.verbose else logging.INFO)
    # kopf logs each watch reconnect and handler success at INFO; ours say what matters.
    logging.getLogger("kopf").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
