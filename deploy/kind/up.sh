#!/usr/bin/env bash
# Creates the kind cluster of deploy/kind/cluster.yaml (if it is not there yet) and deploys imgflow
# into it with skaffold's kind profile: images built with Docker and loaded into the node, the
# chart with its dev Redis and MongoDB, in namespace "imgflow".
#
# Usage: deploy/kind/up.sh [run|dev|delete]
#   run     (default) build, deploy once and return: `skaffold run -p kind`
#   dev     the dev loop: rebuild and redeploy on every change, port-forward the API to :8000
#   delete  delete the kind cluster
#
# Needs Docker (a daemon that answers, not only the client), kind, skaffold, kubectl and helm.
# Environment: KIND_CLUSTER_NAME (default imgflow; the kind profile activates on kind-imgflow).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
# Prefer the repository's own helm/kubectl (scripts/tools.sh) when they are built.
[ -d "$root/.tools/bin" ] && PATH=$root/.tools/bin:$PATH
cluster=${KIND_CLUSTER_NAME:-imgflow}
context=kind-$cluster
mode=${1:-run}

die() { echo "kind-up: $*" >&2; exit 1; }

case $mode in
  run | dev | delete) ;;
  *) die "unknown mode '$mode' (run, dev or delete)" ;;
esac

# kind runs Kubernetes nodes as Docker containers and skaffold builds the images with Docker:
# without a Docker daemon nothing here can work, so say so before anything else.
if ! command -v docker >/dev/null 2>&1; then
  die "Docker is not installed. kind and skaffold need a Docker daemon; run this on a machine with
  Docker (or use 'make cluster-up' for a local API server without containers)."
fi
if ! docker info >/dev/null 2>&1; then
  die "the docker client is here but no Docker daemon answers ('docker info' failed), so kind
  cannot create nodes and skaffold cannot build images. Start Docker, or run this where Docker
  runs (or use 'make cluster-up' for a local API server without containers)."
fi

missing=()
for tool in kind skaffold kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  die "missing: ${missing[*]}. Install them: https://kind.sigs.k8s.io/docs/user/quick-start/#installation,
  https://skaffold.dev/docs/install/, https://kubernetes.io/docs/tasks/tools/, https://helm.sh/docs/intro/install/
  (kubectl and helm can also come from 'scripts/tools.sh kubectl helm')."
fi

if [ "$mode" = delete ]; then
  kind delete cluster --name "$cluster"
  exit 0
fi

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "kind-up: cluster $cluster exists; reusing it" >&2
else
  echo "kind-up: creating kind cluster $cluster" >&2
  kind create cluster --name "$cluster" --config deploy/kind/cluster.yaml --wait 180s
fi

echo "kind-up: skaffold $mode -p kind (context $context)" >&2
if [ "$mode" = dev ]; then
  exec skaffold dev -p kind --kube-context "$context" --port-forward
fi
skaffold run -p kind --kube-context "$context" --status-check=true

cat >&2 <<NEXT

kind-up: imgflow is running in namespace imgflow of $context.
  kubectl --context $context -n imgflow get pods
  kubectl --context $context -n imgflow port-forward svc/imgflow-api 8000:80 &
  curl -F file=@photo.jpg -F userId=me http://127.0.0.1:8000/api/image-processing/jobs
  kubectl --context $context -n imgflow get imagejobs -w
  helm --kube-context $context -n imgflow test imgflow || { kubectl --context $context -n imgflow logs imgflow-test; exit 1; }
  deploy/kind/up.sh dev      # the rebuild-on-change loop
  deploy/kind/up.sh delete   # remove the cluster
NEXT
