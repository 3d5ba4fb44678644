"""The node itself: pods run with IPs, Services resolve by name, kubectl logs/exec/port-forward work,
and nothing in the cluster has a way off the machine."""

from __future__ import annotations

import json
import re
import uuid

import httpx

from tests.node.conftest import Node, images, port_forward, wait_until

RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
# A web server that answers with its own pod name (written to /tmp by the same command).
SERVE = "echo -n $POD > /tmp/name && cd /tmp && exec python3 -m http.server 8080"


def web(name: str, image: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "securityContext": RESTRICTED,
            "containers": [
                {
                    "name": "web",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", SERVE],
                    "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/name", "port": 8080}, "periodSeconds": 1},
                    "securityContext": CONTAINER_SECURITY,
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def service(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def test_the_node_is_ready_and_runs_the_built_components(node: Node) -> None:
    (item,) = node.kube.kubectl_json("get", "nodes")["items"]
    conditions = {c["type"]: c["status"] for c in item["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    info = item["status"]["nodeInfo"]
    assert info["kubeletVersion"].startswith("v1.35."), info
    assert info["kubeProxyVersion"] in ("", info["kubeletVersion"]), info
    assert info["containerRuntimeVersion"].startswith("containerd://1."), info
    dns = node.kube.kubectl_json("get", "deployment", "coredns", "-n", "kube-system")
    assert dns["status"]["readyReplicas"] == 1


def test_pods_get_ips_services_resolve_by_name_and_kubectl_reaches_them(node: Node) -> None:
    kube = node.kube
    ns = f"net-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", ns)
    kube.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    base = images()["base"]
    try:
        for name in ("alpha", "beta"):
            kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(web(name, base)))
            kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(service(name)))
        kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/alpha", "pod/beta", "--timeout=120s")
        pods = kube.kubectl_json("get", "pods", "-n", ns)["items"]
        ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
        assert all(re.fullmatch(r"10\.244\.\d+\.\d+", ip) for ip in ips.values()), ips

        # From alpha, beta's Service by its short and full DNS names (CoreDNS + kube-proxy).
        fetch = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=10).read().decode())"
        for url in ("http://beta/name", f"http://beta.{ns}.svc.cluster.local/name"):
            out = wait_until(
                f"{url} from alpha",
                lambda url=url: kube.kubectl(
                    "exec", "-n", ns, "alpha", "--", "python3", "-c", fetch, url, check=False
                ).stdout.strip(),
                within=60,
            )
            assert out == "beta"
        # kubectl logs: beta's server logged alpha's request, from alpha's pod IP.
        logs = kube.kubectl("logs", "-n", ns, "beta").stdout
        assert f"{ips['alpha']} - - " in logs and "GET /name" in logs, logs
        # kubectl port-forward, to a Service.
        with port_forward(kube, ns, "svc/alpha", 80) as fwd:
            assert httpx.get(f"{fwd.url}/name", timeout=10).text == "alpha"
    finally:
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_node_has_no_way_off_the_machine(node: Node) -> None:
    """Pods route to the node; the node routes only to its pods and to the host's end of its veth."""
    routes = node.run_in_node("ip", "-4", "route").stdout
    assert "default" not in routes, routes
    # 192.0.2.1 stands for any address outside the machine: the kernel answers without sending.
    probe = node.run_in_node("ip", "route", "get", "192.0.2.1")
    assert probe.returncode != 0 and "unreachable" in probe.stderr, probe
    # The node's only link is the veth to this host, which has no route back out for it either.
    links = node.run_in_node("ip", "-o", "link").stdout
    assert sorted(re.findall(r"^\d+: ([^:@]+)", links, re.M))[:2] == ["eth0", "lo"], links
    # Cluster DNS has no upstream: nothing outside cluster.local is forwarded.
    corefile = node.kube.kubectl_json("get", "configmap", "coredns", "-n", "kube-system")["data"]["Corefile"]
    assert "forward" not in corefile and "proxy" not in corefile
