#!/usr/bin/env bash
# The node's volumes for a release's claims (scripts/deploy.sh, before `helm upgrade --install`):
# the node has no volume provisioner, so each claim of the chart's templates/dev-data-claims.yaml
# (the dev Redis's and MongoDB's data, deploy/local/values.yaml turns them on) gets a hostPath
# PersistentVolume under CLUSTER_DIR/volumes, bound to that claim alone and owned by the pods' UID.
# A claim that does not exist yet (a first install, or one after `helm uninstall`; a claim still
# terminating is waited for) or whose volume was Released gets an empty directory: the data lives
# as long as the release, as with a provisioned volume; a restart of the cluster keeps it,
# `scripts/cluster.sh down --purge` deletes it.
#
# Usage: scripts/volumes.sh RELEASE NAMESPACE [helm args...] (KUBECONFIG and CLUSTER_DIR set).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
release=$1 namespace=$2
shift 2
kubectl=$root/.tools/bin/kubectl
helm=$root/.tools/bin/helm
uid=10001 # the chart's podSecurity.runAsUser: hostPath volumes are not given to fsGroup

# The claims the release will have (none when persistence is off: helm then finds no template).
claims=$("$helm" template "$release" "$root/deploy/helm/imgflow" -n "$namespace" \
  -f "$root/deploy/local/values.yaml" "$@" -s templates/dev-data-claims.yaml 2>/dev/null |
  sed -n 's/^  name: //p') || true
for claim in $claims; do
  pv=$namespace-$claim
  path=$CLUSTER_DIR/volumes/$namespace/$claim
  # A claim of an uninstalled release stays, terminating, until its pods are gone: wait for it,
  # or its volume would be kept for it and then left Released, never bound to the new claim.
  if [ -n "$("$kubectl" -n "$namespace" get pvc "$claim" -o 'jsonpath={.metadata.deletionTimestamp}' 2>/dev/null)" ]; then
    "$kubectl" -n "$namespace" wait --for=delete "pvc/$claim" --timeout=300s >/dev/null
  fi
  phase=$("$kubectl" get pv "$pv" -o 'jsonpath={.status.phase}' 2>/dev/null || true)
  if [ "$phase" = Released ] || ! "$kubectl" -n "$namespace" get pvc "$claim" >/dev/null 2>&1; then
    "$kubectl" delete pv "$pv" --ignore-not-found --wait >/dev/null
    rm -rf "$path"
  fi
  mkdir -p "$path"
  chown "$uid:$uid" "$path"
  chmod 0750 "$path"
  "$kubectl" apply --server-side --field-manager=imgflow-deploy -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $pv
  labels: {app.kubernetes.io/managed-by: imgflow-deploy}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: imgflow-node
  claimRef: {namespace: $namespace, name: $claim}
  hostPath: {path: $path, type: Directory}
YAML
done
