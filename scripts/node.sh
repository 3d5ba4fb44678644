# shellcheck shell=bash
# The node of the local cluster: sourced by scripts/cluster.sh, which provides start/stop/pid_of/log.
#
# One node, "imgflow-node", in network and mount namespaces of its own, held open by a `sleep`
# (the "node-ns" process): containerd + runc, kubelet and kube-proxy run inside them; the control
# plane runs on the host. A veth pair links the two, and it is the only way out of the node:
#
#   host                               node namespaces                     pods (ptp veths)
#   kube-apiserver  HOST_IP/30 <-veth-> NODE_IP/30  kubelet, containerd  -> POD_CIDR, Services on
#   (bound to HOST_IP only)             no default route                    SERVICE_CIDR (kube-proxy)
#
# The node has no default route, no NAT to the outside and a DNS server without upstreams, so pods
# can reach each other, Services and the API server, and nothing else: a packet for any other
# address is refused inside the node. Images are imported from scripts/images.sh, never pulled.
# Teardown kills every process of the node's namespaces: the namespaces (veth, routes, iptables
# rules, mounts) vanish with them; the pods' cgroups are removed under CGROUP_ROOT.

node_templates=$root/deploy/local/node

# node_names: the per-directory names and addresses, so that two clusters (a developer's and a
# test run's) can run side by side.
node_names() {
  local id octet
  id=$(printf '%s' "$dir" | sha256sum | cut -c1-6)
  octet=$((0x${id:0:4} % 200 + 20))
  NODE_NAME=imgflow-node
  NODE_ID=$id
  HOST_IP=10.200.$octet.1
  NODE_IP=10.200.$octet.2
  POD_CIDR=10.244.$octet.0/24
  SERVICE_CIDR=10.0.0.0/24
  DNS_IP=10.0.0.10
  VETH=imgf$id
  CGROUP_ROOT=imgflow-$id
  NODE_DIR=$dir/node
}

# in_node COMMAND...: run COMMAND in the node's network and mount namespaces.
in_node() {
  local holder
  holder=$(pid_of node-ns) || die "the node's namespaces are not there (node-ns is not running)"
  nsenter --target "$holder" --mount --net -- "$@"
}

# render TEMPLATE OUT: the template with its $NAME placeholders taken from the environment (all must be set).
render() {
  python3 - "$1" "$2" <<'PY'
import os, string, sys
text = string.Template(open(sys.argv[1]).read()).substitute(os.environ)
tmp = sys.argv[2] + ".tmp"
open(tmp, "w").write(text)
os.replace(tmp, sys.argv[2])
PY
}

export_node_env() {
  export NODE_DIR NODE_NAME NODE_IP HOST_IP POD_CIDR DNS_IP CGROUP_ROOT PKI=$pki CLUSTER_DIR=$dir
  export PAUSE_IMAGE COREDNS_IMAGE
}

node_tools() {
  local missing=() c
  # ipset: for the NetworkPolicy enforcer of tests/node/test_network_policy.py (kube-router)
  for c in containerd runc ctr iptables conntrack ipset nsenter unshare; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
  [ -x /usr/lib/cni/ptp ] || missing+=(containernetworking-plugins)
  [ ${#missing[@]} = 0 ] && return 0
  log "installing the node's Debian packages (${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends containerd runc containernetworking-plugins iptables \
    conntrack ipset util-linux >/dev/null
}

# The namespaces, the veth pair and the routes.
up_node_network() {
  local holder
  if ! holder=$(pid_of node-ns); then
    log "creating the node's network and mount namespaces"
    # unshare without --fork: the sleep itself is the namespaces' first process. Private tmpfs
    # mounts hold what containerd and the CNI plugins would otherwise leave in /run.
    # shellcheck disable=SC2016
    start node-ns unshare --mount --net --propagation private -- bash -c '
      set -e
      mkdir -p /run/netns /run/containerd
      mount -t tmpfs -o mode=755,size=64m node-netns /run/netns
      mount -t tmpfs -o mode=711,size=256m node-containerd /run/containerd
      ip link set lo up
      echo 1 >/proc/sys/net/ipv4/ip_forward
      exec -a "imgflow-node $0" sleep infinity' "$dir/"
    holder=$(pid_of node-ns) || fail_with_log node-ns "the node's namespaces did not come up"
    # The new namespace is ready once the sleep has been exec'd.
    local i
    for ((i = 0; i < 100; i++)); do
      [ "$(ps -o comm= -p "$holder")" = sleep ] && break
      sleep 0.05
    done
  fi
  if ! ip link show "$VETH" >/dev/null 2>&1; then
    ip link add "$VETH" type veth peer name eth0 netns "$holder"
    ip addr add "$HOST_IP/30" dev "$VETH"
    ip link set "$VETH" up
    nsenter --target "$holder" --net -- ip addr add "$NODE_IP/30" dev eth0
    nsenter --target "$holder" --net -- ip link set eth0 up
    # The node's own processes reach Services as on any node: a route for their addresses (kube-
    # proxy's rules then send each packet to a pod; without one, connect() fails before them).
    nsenter --target "$holder" --net -- ip route add "$SERVICE_CIDR" dev eth0
    # The host reaches pods directly (and answers them) through the node.
    ip route replace "$POD_CIDR" via "$NODE_IP" dev "$VETH"
  fi
}

up_containerd() {
  mkdir -p "$NODE_DIR/containerd" "$NODE_DIR/cni"
  render "$node_templates/containerd.toml" "$NODE_DIR/containerd.toml"
  render "$node_templates/cni.conflist" "$NODE_DIR/cni/10-imgflow.conflist"
  if ! pid_of containerd >/dev/null; then
    log "starting containerd in the node"
    start containerd nsenter --target "$(pid_of node-ns)" --mount --net -- \
      containerd --config "$NODE_DIR/containerd.toml" --log-level warn
  fi
  local deadline=$((SECONDS + timeout))
  until ctr --address "$NODE_DIR/containerd.sock" version >/dev/null 2>&1; do
    pid_of containerd >/dev/null || fail_with_log containerd "containerd exited"
    [ $SECONDS -lt $deadline ] || fail_with_log containerd "containerd not ready after ${timeout}s"
    sleep 0.2
  done
}

# node_load_images: import into the node every image of .tools/images.env it does not have yet.
node_load_images() {
  local env=$root/.tools/images.env have line name ref archive
  [ -f "$env" ] || die "no $env: run scripts/images.sh (make images) first"
  have=$(ctr --address "$NODE_DIR/containerd.sock" -n k8s.io images ls -q)
  while IFS= read -r line; do
    case $line in *_IMAGE=*) ;; *) continue ;; esac
    name=${line%%_IMAGE=*}
    ref=${line#*=}
    archive=$(sed -n "s/^${name}_ARCHIVE=//p" "$env")
    grep -qxF "$ref" <<<"$have" && continue
    log "loading $ref into the node"
    ctr --address "$NODE_DIR/containerd.sock" -n k8s.io images import --no-unpack=false "$archive" >/dev/null ||
      die "importing $archive failed"
  done <"$env"
}

up_kubelet() {
  mkdir -p "$NODE_DIR/kubelet" "$NODE_DIR/pod-logs"
  render "$node_templates/kubelet.yaml" "$NODE_DIR/kubelet.yaml"
  # The pods' cgroup root, in every v1 hierarchy (the kubelet wants it to exist).
  local h
  for h in /sys/fs/cgroup/*/; do
    case $h in */unified/) continue ;; esac
    mkdir -p "$h$CGROUP_ROOT"
  done
  if ! pid_of kubelet >/dev/null; then
    log "starting the kubelet in the node"
    start kubelet nsenter --target "$(pid_of node-ns)" --mount --net -- \
      "$bin/kubelet" --config="$NODE_DIR/kubelet.yaml" --kubeconfig="$dir/kubelet.kubeconfig" \
      --root-dir="$NODE_DIR/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" -v=1
  fi
}

up_kube_proxy() {
  render "$node_templates/kube-proxy.yaml" "$NODE_DIR/kube-proxy.yaml"
  if ! pid_of kube-proxy >/dev/null; then
    log "starting kube-proxy in the node"
    start kube-proxy nsenter --target "$(pid_of node-ns)" --mount --net -- \
      "$bin/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml" -v=1
  fi
}

up_controllers() {
  if ! pid_of kube-controller-manager >/dev/null; then
    log "starting kube-controller-manager"
    start kube-controller-manager "$bin/kube-controller-manager" \
      --kubeconfig="$dir/controller-manager.kubeconfig" \
      --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
      --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="$(free_port)" --leader-elect=false \
      --use-service-account-credentials=true \
      --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
      --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
      --service-cluster-ip-range="$SERVICE_CIDR" --controllers='*,-bootstrapsigner,-tokencleaner'
  fi
  if ! pid_of kube-scheduler >/dev/null; then
    log "starting kube-scheduler"
    start kube-scheduler "$bin/kube-scheduler" --kubeconfig="$dir/scheduler.kubeconfig" \
      --authentication-kubeconfig="$dir/scheduler.kubeconfig" \
      --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="$(free_port)" --leader-elect=false
  fi
}

# wait_node_ready: the node registered and Ready, CoreDNS answering.
wait_node_ready() {
  local k=("$bin/kubectl" --kubeconfig="$kubeconfig" --cache-dir="$dir/kube-cache") deadline=$((SECONDS + timeout))
  until "${k[@]}" get node "$NODE_NAME" >/dev/null 2>&1; do
    pid_of kubelet >/dev/null || fail_with_log kubelet "the kubelet exited"
    [ $SECONDS -lt $deadline ] || fail_with_log kubelet "the node did not register in ${timeout}s"
    sleep 0.5
  done
  "${k[@]}" wait --for=condition=Ready "node/$NODE_NAME" --timeout="$((deadline - SECONDS + 1))s" >/dev/null ||
    fail_with_log kubelet "the node is not Ready"
  render "$node_templates/coredns.yaml" "$NODE_DIR/coredns.yaml"
  "${k[@]}" apply --server-side --force-conflicts --field-manager=imgflow-cluster -f "$NODE_DIR/coredns.yaml" \
    >/dev/null || die "applying CoreDNS failed"
  "${k[@]}" -n kube-system rollout status deploy/coredns --timeout="$((deadline - SECONDS + 1))s" >/dev/null ||
    fail_with_log kubelet "CoreDNS did not become ready"
}

cmd_up_node() {
  node_tools
  PAUSE_IMAGE=$(sed -n 's/^PAUSE_IMAGE=//p' "$root/.tools/images.env" 2>/dev/null)
  COREDNS_IMAGE=$(sed -n 's/^COREDNS_IMAGE=//p' "$root/.tools/images.env" 2>/dev/null)
  [ -n "$PAUSE_IMAGE" ] && [ -n "$COREDNS_IMAGE" ] || die "no node images: run scripts/images.sh (make images) first"
  export_node_env
  up_controllers
  up_containerd
  node_load_images
  up_kubelet
  up_kube_proxy
  wait_node_ready
}

# node_processes: every process of the node but its namespaces' holder: those in its network or
# mount namespace (components, shims), their descendants (containers have namespaces of their own)
# and whatever sits in the pods' cgroups.
node_processes() {
  local holder
  holder=$(pid_of node-ns) || holder=0
  python3 - "$holder" "$CGROUP_ROOT" <<'PY'
import os, sys
from pathlib import Path

holder, cgroup_root = int(sys.argv[1]), sys.argv[2]

def ns(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None

parents: dict[int, int] = {}
for entry in Path("/proc").iterdir():
    if entry.name.isdigit():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
theirs = {pid for pid in parents if holder and pid != holder and any(
    ns(pid, kind) == ns(holder, kind) is not None for kind in ("mnt", "net"))}
for procs in Path("/sys/fs/cgroup/pids", cgroup_root).rglob("cgroup.procs"):
    theirs.update(int(line) for line in procs.read_text().split())
grew = True
while grew:
    grew = False
    for pid, parent in parents.items():
        if parent in theirs and pid not in theirs and pid != holder:
            theirs.add(pid)
            grew = True
theirs.discard(os.getpid())
print(" ".join(map(str, sorted(theirs))))
PY
}

# cmd_down_node_components: the node's processes stop (the kubelet first, so it restarts nothing),
# then the controllers. The namespaces stay until the API server, which listens on HOST_IP, is down.
cmd_down_node_components() {
  local pids
  stop kube-proxy 10
  stop kubelet 10
  stop containerd 10
  pids=$(node_processes)
  if [ -n "$pids" ]; then
    log "killing $(echo "$pids" | wc -w) processes left in the node (shims, containers)"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  stop kube-scheduler
  stop kube-controller-manager
}

# cmd_down_node_namespaces: the namespaces (and with them the veth, routes, iptables rules and
# mounts of the node), and the pods' cgroups, which outlive their processes.
cmd_down_node_namespaces() {
  local h i pids
  stop node-ns 5
  ! ip link show "$VETH" >/dev/null 2>&1 || ip link delete "$VETH"
  for ((i = 0; i < 50; i++)); do
    pids=$(node_processes)
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  for h in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
    [ -d "$h" ] || continue
    find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$h" ] || log "could not remove cgroup $h (still in use?)"
  done
}
