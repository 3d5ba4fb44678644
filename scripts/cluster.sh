#!/usr/bin/env bash
# A local Kubernetes cluster for imgflow: etcd, kube-apiserver (real client-certificate auth, RBAC,
# service-account tokens), the CRDs of deploy/helm/imgflow/crds and, by default, a real node:
# kube-controller-manager, kube-scheduler, and in network/mount namespaces of their own containerd +
# runc, the kubelet, kube-proxy, CNI (ptp) and CoreDNS (scripts/node.sh). With CLUSTER_NODE=0 only
# etcd and kube-apiserver run on loopback: objects are stored and validated, pods never run (fast,
# for tests of the API alone). See README.md, "Run it on Kubernetes without Docker".
#
# Usage: scripts/cluster.sh [--dir DIR] up | down [--purge] | status | load-images
#
#   up      generate certificates on first run, start whatever is not running, wait for /readyz,
#           write DIR/kubeconfig (admin, O=system:masters), install the CRDs and wait until
#           Established. Idempotent: a second `up` only re-checks and re-applies the CRDs.
#   down    stop the processes named by DIR/run/*.pid (SIGTERM, then SIGKILL after
#           CLUSTER_STOP_TIMEOUT seconds). Keeps the data (etcd, certificates, kubeconfig), so the
#           next `up` has the same objects; `down --purge` also deletes DIR.
#   status  print what runs, where; exit status 0 if the control plane is ready, 3 if not.
#   load-images  import into the node the images of .tools/images.env it lacks (scripts/images.sh)
#
# Environment:
#   CLUSTER_NODE             1 (default): the whole node; 0: API server only (decided at `up`)
#   CLUSTER_DIR              state directory (default .cluster/ in the repository; --dir wins)
#   CLUSTER_APISERVER_PORT   kube-apiserver's port on 127.0.0.1 (default 6443; "auto": a free one)
#   CLUSTER_ETCD_PORT        etcd client port (default auto)
#   CLUSTER_ETCD_PEER_PORT   etcd peer port (default auto)
#   CLUSTER_TIMEOUT          seconds to wait for readiness (default 180)
#   CLUSTER_STOP_TIMEOUT     seconds to wait for a process to stop before SIGKILL (default 30)
#   CLUSTER_OWNER_PID        with `up`: stop the control plane when this process is gone (a watchdog
#                            process checks every second), so a test run that is killed outright
#                            leaves nothing behind
# Ports are chosen when a process starts and recorded in DIR/ports.env.
# DIR holds pki/ (certificates, keys), etcd/ (the data), logs/, run/ (pid files), ports.env and
# kubeconfig.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/.tools/bin
crds=$root/deploy/helm/imgflow/crds

help() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; }
usage() { echo "usage: scripts/cluster.sh [--dir DIR] up | down [--purge] | status | load-images   (-h: more)" >&2; exit 2; }
log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

dir=${CLUSTER_DIR:-$root/.cluster}
cmd=
purge=0
while [ $# -gt 0 ]; do
  case $1 in
    --dir) [ $# -ge 2 ] || usage; dir=$2; shift 2 ;;
    --dir=*) dir=${1#--dir=}; shift ;;
    --purge) purge=1; shift ;;
    up | down | status | load-images) [ -z "$cmd" ] || usage; cmd=$1; shift ;;
    -h | --help) help ;;
    *) usage ;;
  esac
done
[ -n "$cmd" ] || usage
[ "$purge" = 0 ] || [ "$cmd" = down ] || usage
# Absolute, so that pid checks (which look for DIR in a process's arguments) and kubeconfig work.
case $dir in /*) ;; *) dir=$PWD/$dir ;; esac
dir=${dir%/}

timeout=${CLUSTER_TIMEOUT:-180}
stop_timeout=${CLUSTER_STOP_TIMEOUT:-30}
pki=$dir/pki
run=$dir/run
logs=$dir/logs
kubeconfig=$dir/kubeconfig
marker=$dir/.imgflow-cluster
issuer=https://kubernetes.default.svc.cluster.local
# shellcheck source=versions.env
. "$root/scripts/versions.env"
# shellcheck source=node.sh
. "$root/scripts/node.sh"
node_names

# ---------------------------------------------------------------------------------------------
# processes

# pid_of NAME: print the pid recorded for NAME if that process is alive (not a zombie) and is ours,
# i.e. its arguments mention DIR; otherwise fail.
pid_of() {
  local file=$run/$1.pid pid args stat
  [ -s "$file" ] || return 1
  read -r pid <"$file" || return 1
  case $pid in '' | *[!0-9]*) return 1 ;; esac
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  case $stat in Z*) return 1 ;; esac
  args=$(ps -ww -o args= -p "$pid" 2>/dev/null) || return 1
  case $args in *"$dir/"*) echo "$pid" ;; *) return 1 ;; esac
}

# start NAME COMMAND...: run COMMAND detached (own session, no terminal, output to DIR/logs/NAME.log)
# and record its pid in DIR/run/NAME.pid.
start() {
  local name=$1 file=$run/$1.pid i
  shift
  rm -f "$file"
  echo "=== $(date -u +%FT%TZ) start" >>"$logs/$name.log"
  # The inner shell writes its own pid and execs the command, so the pid is right whether or not
  # setsid forks. umask 022: what the servers create (containerd's snapshots) is readable by the
  # containers' non-root users.
  # shellcheck disable=SC2016
  setsid bash -c 'umask 022 && echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$file" "$@" \
    </dev/null >>"$logs/$name.log" 2>&1 9>&- &
  for ((i = 0; i < 100; i++)); do
    [ -s "$file" ] && return 0
    sleep 0.05
  done
  die "$name did not start; see $logs/$name.log"
}

# stop NAME [SECONDS]: SIGTERM, wait up to SECONDS (CLUSTER_STOP_TIMEOUT), then SIGKILL.
stop() {
  local name=$1 wait=${2:-$stop_timeout} pid deadline
  if ! pid=$(pid_of "$name"); then
    rm -f "$run/$name.pid"
    [ "$name" = watchdog ] || log "$name: not running"
    return 0
  fi
  if [ "$pid" = $$ ]; then # the watchdog runs this `down`
    rm -f "$run/$name.pid"
    return 0
  fi
  # Each process leads its own session and process group (setsid): signal the group, so that a
  # child (the watchdog's sleep) goes too.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + wait))
  while pid_of "$name" >/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if pid_of "$name" >/dev/null; then
    log "$name (pid $pid) did not stop in ${wait}s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while pid_of "$name" >/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    ! pid_of "$name" >/dev/null || die "$name (pid $pid) survived SIGKILL"
  fi
  rm -f "$run/$name.pid"
  log "$name: stopped (pid $pid)"
}

# fail_with_log NAME MESSAGE: report a failed start with the end of NAME's log.
fail_with_log() {
  log "$2; last lines of $logs/$1.log:"
  tail -n 25 "$logs/$1.log" | sed 's/^/    /' >&2
  log "(scripts/cluster.sh --dir $dir down stops whatever did start)"
  exit 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# port VALUE: VALUE, or a free port for "auto"/"0"/"".
port() {
  case ${1:-auto} in
    auto | 0) free_port ;;
    *[!0-9]*) die "not a port: $1" ;;
    *) echo "$1" ;;
  esac
}

# http_ok URL [tls]: the URL answers 200; with "tls", trusting our CA and as the admin. curl if
# there is one, else python3.
http_ok() {
  local url=$1 tls=()
  [ "${2:-}" != tls ] || tls=("$pki/ca.crt" "$pki/admin.crt" "$pki/admin.key")
  if command -v curl >/dev/null; then
    local args=(-fsS --max-time 5 -o /dev/null)
    [ ${#tls[@]} = 0 ] || args+=(--cacert "${tls[0]}" --cert "${tls[1]}" --key "${tls[2]}")
    curl "${args[@]}" "$url" 2>/dev/null
  else
    python3 -c '
import ssl, sys, urllib.request
url, *tls = sys.argv[1:]
ctx = None
if tls:
    ctx = ssl.create_default_context(cafile=tls[0])
    ctx.load_cert_chain(tls[1], tls[2])
urllib.request.urlopen(url, timeout=5, context=ctx).read()
' "$url" "${tls[@]}" 2>/dev/null
  fi
}

save_ports() {
  cat >"$dir/ports.env.tmp" <<EOF
ETCD_PORT=${ETCD_PORT:-}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-}
APISERVER_PORT=${APISERVER_PORT:-}
NODE=$NODE
EOF
  mv "$dir/ports.env.tmp" "$dir/ports.env"
}

load_ports() {
  ETCD_PORT='' ETCD_PEER_PORT='' APISERVER_PORT='' NODE=
  # shellcheck disable=SC1091
  [ ! -f "$dir/ports.env" ] || . "$dir/ports.env"
  NODE=${NODE:-0}
  set_apiserver_host
}

# With a node, the API server listens on the host's end of the node's veth (HOST_IP); without one,
# on loopback.
set_apiserver_host() {
  if [ "$NODE" = 1 ]; then APISERVER_HOST=$HOST_IP; else APISERVER_HOST=127.0.0.1; fi
}

# ---------------------------------------------------------------------------------------------
# certificates: an EC P-256 CA, the apiserver's serving certificate, the service-account key pair
# and an admin client certificate in system:masters. Generated once; `down --purge` forgets them.

certs() {
  mkdir -p "$pki" && chmod 700 "$pki"
  # An apiserver certificate from before the node (no SAN for HOST_IP) is made again.
  if [ -s "$pki/apiserver.crt" ] && ! openssl x509 -in "$pki/apiserver.crt" -noout -text | grep -q "IP Address:$HOST_IP"; then
    rm -f "$pki/apiserver.crt" "$pki/apiserver.key"
  fi
  (
    cd "$pki"
    umask 077
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    # A minimal config, so the system's openssl.cnf does not matter.
    printf '[req]\ndistinguished_name=dn\n[dn]\n' >openssl.cnf
    if [ ! -s ca.crt ] || [ ! -s ca.key ]; then
      log "generating certificates in $pki"
      rm -f ./*.crt ./*.key ./*.pub
      key ca.key
      openssl req -config openssl.cnf -x509 -new -key ca.key -sha256 -days 3650 -out ca.crt \
        -subj "/CN=imgflow-local-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    fi
    # leaf NAME SUBJECT USAGE [SAN]: a certificate signed by the CA, unless it exists.
    leaf() {
      [ -s "$1.crt" ] && [ -s "$1.key" ] && return 0
      key "$1.key"
      openssl req -config openssl.cnf -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' "$3" >"$1.ext"
      [ -z "${4:-}" ] || echo "subjectAltName=$4" >>"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    leaf apiserver "/CN=kube-apiserver" serverAuth \
      "IP:127.0.0.1,DNS:localhost,IP:$HOST_IP,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    leaf admin "/O=system:masters/CN=imgflow-admin" clientAuth
    # The node's components, each under the identity Kubernetes' default RBAC gives its rights to.
    leaf kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
    leaf kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
    leaf kube-proxy "/CN=system:kube-proxy" clientAuth
    leaf controller-manager "/CN=system:kube-controller-manager" clientAuth
    leaf scheduler "/CN=system:kube-scheduler" clientAuth
    # The API server's own identity toward aggregated APIs (an external metrics adapter's).
    leaf front-proxy-client "/CN=front-proxy-client" clientAuth
    if [ ! -s sa.key ] || [ ! -s sa.pub ]; then
      key sa.key
      openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    fi
    rm -f ca.srl openssl.cnf
  ) || die "certificate generation failed (openssl)"
}

b64() { base64 <"$1" | tr -d '\n'; }

# kubeconfig_for FILE CERT: a kubeconfig for the API server, as the identity of pki/CERT.crt.
kubeconfig_for() {
  (umask 077 && cat >"$1.tmp") <<EOF
apiVersion: v1
kind: Config
clusters:
- name: imgflow-local
  cluster:
    server: https://$APISERVER_HOST:$APISERVER_PORT
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$pki/$2.crt")
    client-key-data: $(b64 "$pki/$2.key")
contexts:
- name: imgflow-local
  context:
    cluster: imgflow-local
    user: $2
current-context: imgflow-local
EOF
  mv "$1.tmp" "$1"
}

write_kubeconfig() {
  kubeconfig_for "$kubeconfig" admin
  if [ "$NODE" = 1 ]; then
    kubeconfig_for "$dir/kubelet.kubeconfig" kubelet
    kubeconfig_for "$dir/kube-proxy.kubeconfig" kube-proxy
    kubeconfig_for "$dir/controller-manager.kubeconfig" controller-manager
    kubeconfig_for "$dir/scheduler.kubeconfig" scheduler
  fi
}

# ---------------------------------------------------------------------------------------------
# components

up_etcd() {
  local pid deadline
  if pid=$(pid_of etcd); then
    [ -n "$ETCD_PORT" ] || die "etcd runs (pid $pid) but $dir/ports.env does not say on which port"
    return 0
  fi
  ETCD_PORT=$(port "${CLUSTER_ETCD_PORT:-auto}")
  ETCD_PEER_PORT=$(port "${CLUSTER_ETCD_PEER_PORT:-auto}")
  [ "$ETCD_PORT" != "$ETCD_PEER_PORT" ] || ETCD_PEER_PORT=$(free_port)
  local client=http://127.0.0.1:$ETCD_PORT peer=http://127.0.0.1:$ETCD_PEER_PORT
  log "starting etcd on $client"
  # --unsafe-no-fsync: a disposable local store; losing the last writes on a machine crash is fine,
  # waiting for fsync on a busy disk is not.
  start etcd "$bin/etcd" --name=imgflow --data-dir="$dir/etcd" \
    --listen-client-urls="$client" --advertise-client-urls="$client" \
    --listen-peer-urls="$peer" --initial-advertise-peer-urls="$peer" \
    --initial-cluster="imgflow=$peer" --initial-cluster-state=new \
    --unsafe-no-fsync --log-level=warn
  save_ports
  deadline=$((SECONDS + timeout))
  until http_ok "$client/health"; do
    pid_of etcd >/dev/null || fail_with_log etcd "etcd exited"
    [ $SECONDS -lt $deadline ] || fail_with_log etcd "etcd not healthy after ${timeout}s"
    sleep 0.2
  done
}

up_apiserver() {
  local pid node_flags=(--endpoint-reconciler-type=none)
  if pid=$(pid_of kube-apiserver); then
    [ -n "$APISERVER_PORT" ] || die "kube-apiserver runs (pid $pid) but $dir/ports.env does not say on which port"
    return 0
  fi
  APISERVER_PORT=$(port "${CLUSTER_APISERVER_PORT:-6443}")
  if [ "$NODE" = 1 ]; then
    # Reachable from the node through the veth (and only there and from this host); its address
    # is the `kubernetes` Service's endpoint. It reaches the kubelet by its CA-signed certificate.
    node_flags=(
      --kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key"
      --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP
      --enable-admission-plugins=NodeRestriction
      # Aggregated APIs (an external metrics adapter, e.g. KEDA's): the host routes to pod IPs
      # but not to Service IPs (kube-proxy runs in the node), so the endpoint is called directly.
      --enable-aggregator-routing=true
      --proxy-client-cert-file="$pki/front-proxy-client.crt" --proxy-client-key-file="$pki/front-proxy-client.key"
      --requestheader-client-ca-file="$pki/ca.crt" --requestheader-allowed-names=front-proxy-client
      --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group
      --requestheader-extra-headers-prefix=X-Remote-Extra-
    )
  fi
  log "starting kube-apiserver on https://$APISERVER_HOST:$APISERVER_PORT"
  start kube-apiserver "$bin/kube-apiserver" \
    --bind-address="$APISERVER_HOST" --advertise-address="$APISERVER_HOST" --secure-port="$APISERVER_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer="$issuer" --api-audiences="$issuer" \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    "${node_flags[@]}" \
    --allow-privileged=true \
    --profiling=false
  save_ports
}

wait_ready() {
  local deadline=$((SECONDS + timeout))
  local url=https://$APISERVER_HOST:$APISERVER_PORT/readyz
  until http_ok "$url" tls; do
    pid_of etcd >/dev/null || fail_with_log etcd "etcd exited"
    pid_of kube-apiserver >/dev/null || fail_with_log kube-apiserver "kube-apiserver exited"
    [ $SECONDS -lt $deadline ] || fail_with_log kube-apiserver "kube-apiserver not ready after ${timeout}s"
    sleep 0.2
  done
}

install_crds() {
  compgen -G "$crds/*.yaml" >/dev/null || return 0
  local k=("$bin/kubectl" --kubeconfig="$kubeconfig" --cache-dir="$dir/kube-cache")
  "${k[@]}" apply --server-side --force-conflicts --field-manager=imgflow-cluster -f "$crds" >/dev/null ||
    die "installing the CRDs in $crds failed"
  local names name deadline=$((SECONDS + timeout))
  # `kubectl wait` fails at once ("accessor error: <nil>") on a CRD whose status has no
  # conditions yet, as a freshly applied one may: asked again until the deadline.
  until "${k[@]}" wait --for=condition=Established --timeout="${timeout}s" -f "$crds" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "the CRDs in $crds did not become Established"
    sleep 0.2
  done
  # Established is not yet published: `kubectl explain` needs the OpenAPI document, which the
  # apiserver rebuilds a moment later.
  names=$("${k[@]}" get -f "$crds" -o name | sed 's|.*/||' | tr '\n' ' ')
  for name in $names; do
    until "${k[@]}" explain "$name" >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || die "CRD $name is not in the OpenAPI document after ${timeout}s"
      sleep 0.2
    done
  done
  log "CRDs established: ${names% }"
}

# The watchdog: `cluster.sh down` once CLUSTER_OWNER_PID is gone. Its arguments name DIR, so pid_of
# recognises it, and it execs `down` in the same process.
up_watchdog() {
  local owner=${CLUSTER_OWNER_PID:-}
  [ -n "$owner" ] || return 0
  case $owner in *[!0-9]*) die "CLUSTER_OWNER_PID is not a pid: $owner" ;; esac
  if pid_of watchdog >/dev/null; then
    return 0
  fi
  kill -0 "$owner" 2>/dev/null || die "CLUSTER_OWNER_PID $owner is not running"
  # shellcheck disable=SC2016
  start watchdog bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" --dir "$3" down' \
    watchdog "$owner" "$root/scripts/cluster.sh" "$dir/"
}

cmd_up() {
  local want_node=${CLUSTER_NODE:-1}
  command -v openssl >/dev/null || die "openssl is needed"
  if [ "$want_node" = 1 ]; then
    # shellcheck disable=SC2086
    "$root/scripts/tools.sh" etcd $KUBERNETES_COMMANDS
  else
    "$root/scripts/tools.sh" etcd kube-apiserver kubectl
  fi
  mkdir -p "$dir" "$run" "$logs"
  [ -f "$marker" ] || echo "imgflow local control plane state; see scripts/cluster.sh" >"$marker"
  certs
  load_ports
  if [ "$NODE" != "$want_node" ] && pid_of kube-apiserver >/dev/null; then
    log "switching CLUSTER_NODE to $want_node: restarting kube-apiserver"
    stop kube-apiserver
  fi
  NODE=$want_node
  set_apiserver_host
  if [ "$NODE" = 1 ]; then
    node_tools
    up_node_network
  fi
  # An apiserver whose etcd is gone would wait for it forever (and does not shut down gracefully
  # without it): restart both.
  if ! pid_of etcd >/dev/null && pid_of kube-apiserver >/dev/null; then
    log "etcd is gone; restarting kube-apiserver too"
    stop kube-apiserver 3
  fi
  up_etcd
  up_apiserver
  write_kubeconfig
  wait_ready
  install_crds
  [ "$NODE" != 1 ] || cmd_up_node
  up_watchdog
  log "ready: https://$APISERVER_HOST:$APISERVER_PORT   KUBECONFIG=$kubeconfig"
}

cmd_down() {
  if [ -d "$dir" ]; then
    load_ports
    stop watchdog
    cmd_down_node_components
    stop kube-apiserver
    cmd_down_node_namespaces
    stop etcd
  else
    log "no cluster in $dir"
  fi
  if [ $purge = 1 ] && [ -d "$dir" ]; then
    [ -f "$marker" ] || die "not purging $dir: it has no $(basename "$marker")"
    rm -rf "$dir"
    log "purged $dir"
  elif [ -d "$dir/etcd" ]; then
    log "data kept in $dir (scripts/cluster.sh down --purge deletes it)"
  fi
}

cmd_status() {
  local name pid ready=0
  load_ports 2>/dev/null || true
  echo "dir:            $dir"
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler node-ns containerd kubelet kube-proxy watchdog; do
    if pid=$(pid_of "$name"); then
      case $name in
        watchdog) printf '%-15s running, pid %s, stops the control plane when pid %s exits\n' "$name:" "$pid" \
          "$(ps -ww -o args= -p "$pid" | awk '{print $(NF-2)}')" ;;
        etcd) printf '%-15s running, pid %s, http://127.0.0.1:%s\n' "$name:" "$pid" "$ETCD_PORT" ;;
        kube-apiserver) printf '%-15s running, pid %s, https://%s:%s\n' "$name:" "$pid" "$APISERVER_HOST" "$APISERVER_PORT" ;;
        *) printf '%-15s running, pid %s\n' "$name:" "$pid" ;;
      esac
    elif [ $name = etcd ] || [ $name = kube-apiserver ] || { [ "$NODE" = 1 ] && [ $name != watchdog ]; }; then
      printf '%-15s stopped\n' "$name:"
    fi
  done
  if pid_of kube-apiserver >/dev/null &&
    http_ok "https://$APISERVER_HOST:$APISERVER_PORT/readyz" tls; then
    ready=1
    echo "readyz:         ok"
    echo "kubeconfig:     $kubeconfig"
  else
    echo "readyz:         not ready"
  fi
  [ $ready = 1 ] || exit 3
}

# One `up` or `down` at a time per DIR (when flock(1) is there to say so).
lock() {
  command -v flock >/dev/null || return 0
  exec 9>>"$dir/.lock"
  flock -w "$timeout" 9 || die "another scripts/cluster.sh holds $dir/.lock"
}

case $cmd in
  up)
    mkdir -p "$dir"
    lock
    cmd_up
    ;;
  down)
    [ ! -d "$dir" ] || lock
    cmd_down
    ;;
  status) cmd_status ;;
  load-images)
    load_ports
    [ "$NODE" = 1 ] || die "the cluster in $dir has no node"
    node_load_images
    ;;
esac
