"""The operator's own settings, on top of the shared ones (same ``IMGFLOW_`` prefix)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, Field, StringConstraints

from imgflow.core.keys import TENANT_PATTERN
from imgflow.core.settings import Settings

Tenant = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]


class OperatorSettings(Settings):
    operator_namespace: str | None = Field(
        None,
        # The Downward API's POD_NAMESPACE by default: the operator manages the namespace it runs in.
        validation_alias=AliasChoices("IMGFLOW_OPERATOR_NAMESPACE", "POD_NAMESPACE", "operator_namespace"),
        description="Namespace watched for ImageJobs and autoscaled Deployments (default: POD_NAMESPACE)",
    )
    namespace_tenants: dict[str, Tenant] = Field(
        default_factory=dict,
        description='Tenant of the ImageJobs of each namespace, as a JSON object {"namespace": "tenant"}; '
        "a namespace not named: default_tenant. An ImageJob's spec.tenant may only repeat it",
    )
    operator_peering: bool = Field(
        False, description="Use kopf peering (needs a KopfPeering resource) instead of --standalone"
    )
    operator_health_port: int = Field(8080, description="Port of kopf's liveness endpoint /healthz (0: off)")
    operator_metrics_port: int = Field(
        9090, description="Port of the operator's Prometheus /metrics (0: off)"
    )
    autoscale_interval_s: float = Field(
        0.5, gt=0, description="How often the backlog is read and the worker Deployments rescaled"
    )
    pod_cost_interval_s: float = Field(
        0.5, gt=0, description="How often worker pods' deletion cost is updated from their in-flight jobs"
    )
