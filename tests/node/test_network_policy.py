"""The chart's NetworkPolicies enforced on the node: a pod they do not allow is refused, and the
release keeps working.

The node's CNI (ptp) enforces no NetworkPolicy, so this module runs an enforcer beside it for its
own duration: kube-router (.tools/bin/kube-router, built by scripts/tools.sh) with only its firewall
on, in the node's network namespace, where the pods' veths and kube-proxy's rules are; its
iptables rules and ipsets never reach the host's. Why kube-router v2.1.0: it is the only enforcer
the Go module proxy serves that works on this kernel (kube-network-policies needs nftables'
``queue``, which the kernel lacks; Calico is not served). Security flaws are reported for v2.1.0
(GHSA-phqm-jgc3-qf8g: its service proxy copies Services' external and load-balancer IPs into the
node's network setup, a risk where untrusted users create Services). Here its proxy and router do
not run, and it lives only in this throwaway node, which has no route off the machine, for a few
minutes; it is never part of the chart or its images.

The release is deployed without policies and upgraded with ``networkPolicy.enabled=true``: a
"stranger" pod in the release's namespace, without the labels the policies name, is refused by
Redis, MongoDB, SeaweedFS and the API; labelled as ``networkPolicy.apiFrom`` says, it reaches the
API and still not Redis; a worker cannot reach the stranger (a private address outside its
backends, as a URL source pointing into the cluster would be) nor the API, and reaches its backends
by name; the operator reaches the Kubernetes API; ``helm test`` (an upload through
the API Service, completed by a worker) passes. With the policies disabled again the same
connections succeed, so the refusals were theirs.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from imgflow.harness.helm_chart import CHART, helm
from imgflow.harness.paths import TOOLS
from tests.node.conftest import Node, images, make_deploy, wait_until
from tests.node.test_chart_on_node import NS, RELEASE

# Run alone, the test starts the node too.
pytestmark = pytest.mark.timeout(600)
STRANGER = "stranger"
STRANGER_PORT = 8080
CLIENT_LABEL = "imgflow.io/api-client"
BACKENDS = [f"{RELEASE}-redis:6379", f"{RELEASE}-mongodb:27017", f"{RELEASE}-seaweedfs:8333"]
API = f"{RELEASE}-api:80"
# What kube-router makes in the node: chains, the jumps to them from the built-in ones, ipsets.
CHAINS = ("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")
IPSETS = ("KUBE-SRC-", "KUBE-DST-")

# Each target HOST:PORT, then "connected" or why not (a refusal, a timeout, no name).
CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(target, "connected")
    except OSError as e:
        print(target, type(e).__name__)
"""


def stranger_pod() -> str:
    """A pod of no imgflow component that listens on STRANGER_PORT, under the restricted standard."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": STRANGER, "labels": {"app": STRANGER}},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": STRANGER,
                    "image": images()["base"],
                    "command": ["python3", "-m", "http.server", str(STRANGER_PORT)],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    return yaml.safe_dump(pod)


def enforcer_rules(node: Node) -> tuple[list[str], list[str]]:
    """kube-router's iptables rules and ipsets in the node."""
    lines = node.run_in_node("iptables", "-S").stdout.splitlines()
    rules = [r for r in lines if any(w.startswith(CHAINS) for w in r.split())]
    sets = [s for s in node.run_in_node("ipset", "list", "-n").stdout.split() if s.startswith(IPSETS)]
    return rules, sets


def remove_enforcer_rules(node: Node) -> None:
    """What kube-router made in the node, gone: v2.1.0's own --cleanup-config panics (a nil pointer
    in its service proxy's cleanup) and its firewall's part of it removes no rule."""

    def run(*cmd: str) -> None:
        done = node.run_in_node(*cmd)
        assert done.returncode == 0, f"{cmd}: {done.stderr}"

    rules = node.run_in_node("iptables", "-S").stdout.splitlines()
    for rule in rules:
        words = shlex.split(rule)
        if words[0] == "-A" and words[1] in ("INPUT", "FORWARD", "OUTPUT") and words[-1].startswith(CHAINS):
            run("iptables", "-D", *words[1:])
    chains = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(CHAINS)]
    for chain in chains:
        run("iptables", "-F", chain)
    for chain in chains:
        run("iptables", "-X", chain)
    for name in node.run_in_node("ipset", "list", "-n").stdout.split():
        if name.startswith(IPSETS):
            run("ipset", "destroy", name)


@pytest.fixture(scope="module")
def enforcer(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    log_path = tmp_path_factory.mktemp("kube-router") / "kube-router.log"
    with log_path.open("w") as log:
        # nsenter execs kube-router: terminating this process stops it
        process = subprocess.Popen(
            [
                "nsenter", f"--target={node.holder}", "--net", "--", str(TOOLS / "kube-router"),
                "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
                f"--kubeconfig={node.kube.kubeconfig}", "--hostname-override=imgflow-node",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def syncing() -> bool:
            assert process.poll() is None, log_path.read_text()[-3000:]
            return node.run_in_node("iptables", "-S", "KUBE-ROUTER-FORWARD").returncode == 0

        wait_until("kube-router's rules in the node", syncing, within=60)
        yield
    finally:
        process.terminate()
        process.wait(30)
        remove_enforcer_rules(node)
        assert enforcer_rules(node) == ([], [])


@pytest.fixture(scope="module")
def released(node: Node, enforcer: None) -> Iterator[None]:
    make_deploy(node, NS, RELEASE)
    yield
    helm("uninstall", RELEASE, "-n", NS, "--ignore-not-found", kubeconfig=node.kube.kubeconfig)


def policy_values(node: Node, path: Path) -> Path:
    """networkPolicy values for this node: apiFrom names CLIENT_LABEL's pods; the operator's
    Kubernetes API rule allows ports 443 and 6443, and this node's API server listens on another, so
    its address and port go into extraEgress as a cluster with such an API server would need."""
    [slice_] = node.kube.kubectl_json(
        "get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes"
    )["items"]
    [address] = slice_["endpoints"][0]["addresses"]
    [port] = [p["port"] for p in slice_["ports"]]
    values = {
        "networkPolicy": {
            "enabled": True,
            "apiFrom": [{"podSelector": {"matchLabels": {CLIENT_LABEL: "true"}}}],
            "extraEgress": [
                {"to": [{"ipBlock": {"cidr": f"{address}/32"}}], "ports": [{"port": port, "protocol": "TCP"}]}
            ],
        }
    }
    path.write_text(yaml.safe_dump(values))
    return path


def upgrade(node: Node, *values: str) -> None:
    helm(
        "upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values", *values, "--wait", "--timeout", "3m",
        kubeconfig=node.kube.kubeconfig, timeout=200,
    )  # fmt: skip


def connections(node: Node, pod: str, *targets: str) -> dict[str, str]:
    """``target -> "connected" | why not`` for a TCP connection from ``pod`` to each target."""
    out = node.kube.kubectl("exec", "-n", NS, pod, "--", "python3", "-c", CONNECT, *targets).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def settle(node: Node, pod: str, expected: dict[str, str]) -> None:
    """``pod``'s connections become ``expected`` (the enforcer applies a change within moments); if
    not within a minute, the assertion shows the last ones."""
    seen = [connections(node, pod, *expected)]

    def check() -> bool:
        seen.append(connections(node, pod, *expected))
        return seen[-1] == expected

    with contextlib.suppress(AssertionError):
        wait_until(f"{pod}'s connections", check, within=60)
    assert seen[-1] == expected


def test_a_pod_the_policies_do_not_allow_is_refused_while_the_release_works(
    node: Node, released: None, tmp_path: Path
) -> None:
    kube = node.kube
    kube.kubectl("apply", "-n", NS, "-f", "-", input=stranger_pod())
    try:
        kube.kubectl(
            "wait", "-n", NS, f"pod/{STRANGER}", "--for=condition=Ready", "--timeout=120s", timeout=130
        )
        stranger_ip = kube.kubectl("get", "pod", "-n", NS, STRANGER, "-o", "jsonpath={.status.podIP}").stdout
        stranger = f"{stranger_ip}:{STRANGER_PORT}"
        worker = f"deploy/{RELEASE}-worker"
        # without policies, every connection is made
        everything = {t: "connected" for t in [*BACKENDS, API]}
        settle(node, STRANGER, everything)
        settle(node, worker, {stranger: "connected"})

        upgrade(node, "-f", str(policy_values(node, tmp_path / "policy.yaml")))
        refused = {t: "ConnectionRefusedError" for t in [*BACKENDS, API]}
        settle(node, STRANGER, refused)
        # a worker reaches its backends by name (DNS allowed), not the API nor another pod
        connected = {t: "connected" for t in BACKENDS}
        settle(node, worker, {**connected, API: "ConnectionRefusedError", stranger: "ConnectionRefusedError"})
        # the operator reaches the Kubernetes API (extraEgress) and its backends
        settle(node, f"deploy/{RELEASE}-operator", {**connected, "kubernetes.default:443": "connected"})
        # the enforcer's rules are in the node's namespace only
        host = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
        assert "kube-router" not in host and "KUBE-POD-FW-" not in host

        kube.kubectl("label", "pod", "-n", NS, STRANGER, f"{CLIENT_LABEL}=true")
        settle(node, STRANGER, {**refused, API: "connected"})
        # The test pod submits an image through the API Service and waits for it to complete.
        out = helm(
            "test", RELEASE, "-n", NS, "--timeout", "3m", kubeconfig=kube.kubeconfig, timeout=200
        ).stdout
        assert "Phase:          Succeeded" in out, out

        # the same connections, with the policies gone
        kube.kubectl("label", "pod", "-n", NS, STRANGER, f"{CLIENT_LABEL}-")
        upgrade(node, "--set", "networkPolicy.enabled=false")
        settle(node, STRANGER, everything)
        settle(node, worker, {stranger: "connected"})
    finally:
        kube.kubectl("delete", "pod", "-n", NS, STRANGER, "--ignore-not-found", "--wait=false")
