"""The few Kubernetes API calls the operator makes itself (kopf makes the rest).

The official client is synchronous; each call runs in a thread so the event loop, which also runs
kopf's watches and the autoscaler, never waits on the network.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

import kubernetes
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from imgflow.operator.imagejob import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
FIELD_MANAGER = "imgflow-operator"
TIMEOUT_S = 10.0

log = logging.getLogger(__name__)

# What a call may raise when the API server refuses it or cannot be reached.
KubeError = (ApiException, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class ObjectRef:
    """Enough of an object to hang an Event on."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str


def load_config() -> None:
    """In-cluster service account if there is one, else ``KUBECONFIG`` / ``~/.kube/config``."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]


class Kube:
    def __init__(self) -> None:
        client = kubernetes.client.ApiClient()
        self._apps = kubernetes.client.AppsV1Api(client)
        self._core = kubernetes.client.CoreV1Api(client)
        self._custom = kubernetes.client.CustomObjectsApi(client)

    async def serves_image_jobs(self) -> bool:
        """The API server serves ImageJobs (the CRD is installed), by discovery: needs no RBAC."""
        try:
            found = await asyncio.to_thread(
                self._custom.get_api_resources, GROUP, VERSION, _request_timeout=TIMEOUT_S
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return any(resource.name == PLURAL for resource in found.resources)

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set a Deployment's replicas through its ``scale`` subresource (all the RBAC allows)."""
        await asyncio.to_thread(
            self._apps.patch_namespaced_deployment_scale,
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
            _request_timeout=TIMEOUT_S,
        )

    async def set_deletion_cost(self, namespace: str, pod: str, cost: int) -> bool:
        """Annotate a pod with its deletion cost; False if the pod is gone."""
        body = {"metadata": {"annotations": {DELETION_COST: str(cost)}}}
        try:
            await asyncio.to_thread(
                self._core.patch_namespaced_pod,
                pod,
                namespace,
                body,
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _request_timeout=TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete_image_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete an ImageJob, only if it is still the one we mean (same uid); gone is fine."""
        try:
            await asyncio.to_thread(
                self._custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body=kubernetes.client.V1DeleteOptions(
                    preconditions=kubernetes.client.V1Preconditions(uid=uid)
                ),
                _request_timeout=TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    async def post_event(self, obj: ObjectRef, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``obj``, as ``kubectl describe`` shows them; failures are only logged.

        kopf posts the ImageJobs' events from its handlers; this is for the autoscaler, which runs
        outside any handler.
        """
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{obj.name}.", "namespace": obj.namespace},
            "involvedObject": {
                "apiVersion": obj.api_version,
                "kind": obj.kind,
                "namespace": obj.namespace,
                "name": obj.name,
                "uid": obj.uid,
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        event = kubernetes.client.CoreV1Event.from_dict(body)
        assert event is not None
        try:
            await asyncio.to_thread(
                self._core.create_namespaced_event,
                obj.namespace,
                event,
                _request_timeout=TIMEOUT_S,
            )
        except KubeError as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, obj.kind, obj.name, exc)
