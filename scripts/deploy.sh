#!/usr/bin/env bash
# `make deploy`: install (or upgrade) the chart as release RELEASE in namespace NAMESPACE on the
# node of `make cluster-up`, with the images of `make images` loaded into it and the dev Redis,
# MongoDB-wire server (FerretDB) and S3 server (SeaweedFS) as pods; wait until every pod is Ready
# and the API answers through its Service;
# say how to reach the API.
#
# Environment: CLUSTER_DIR (default .cluster), RELEASE (imgflow), NAMESPACE (imgflow),
# DEPLOY_TIMEOUT (default 300s); extra arguments go to `helm upgrade --install` (e.g. --set ...).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${CLUSTER_DIR:-$root/.cluster}
release=${RELEASE:-imgflow}
namespace=${NAMESPACE:-imgflow}
wait=${DEPLOY_TIMEOUT:-300s}
images=$root/.tools/images.env
export KUBECONFIG=$dir/kubeconfig
kubectl=$root/.tools/bin/kubectl
helm=$root/.tools/bin/helm

log() { echo "deploy: $*" >&2; }
[ -f "$KUBECONFIG" ] || { log "no cluster in $dir: run make cluster-up"; exit 1; }
[ -f "$images" ] || { log "no $images: run make images"; exit 1; }
"$root/scripts/cluster.sh" --dir "$dir" load-images

# image NAME: the reference scripts/images.sh built for NAME.
image() { sed -n "s/^${1}_IMAGE=//p" "$images"; }
repo() { local r; r=$(image "$1"); echo "${r%:*}"; }
tag() { local r; r=$(image "$1"); echo "${r##*:}"; }

# The restricted Pod Security Standard is enforced on the namespace: every pod of the chart meets it.
"$kubectl" create namespace "$namespace" --dry-run=client -o yaml |
  "$kubectl" label --local -f - -o yaml pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest |
  "$kubectl" apply --server-side --field-manager=imgflow-deploy -f - >/dev/null

CLUSTER_DIR=$dir "$root/scripts/volumes.sh" "$release" "$namespace" "$@"
log "installing the chart as $release in namespace $namespace"
set_images=()
for member in api worker operator; do
  set_images+=(--set "$member.image.repository=$(repo "${member^^}")" --set "$member.image.tag=$(tag "${member^^}")")
done
"$helm" upgrade --install "$release" "$root/deploy/helm/imgflow" -n "$namespace" \
  -f "$root/deploy/local/values.yaml" "${set_images[@]}" \
  --set "redis.image.repository=$(repo REDIS)" --set "redis.image.tag=$(tag REDIS)" \
  --set "mongodb.image.repository=$(repo FERRETDB)" --set "mongodb.image.tag=$(tag FERRETDB)" \
  --set "seaweedfs.image.repository=$(repo SEAWEEDFS)" --set "seaweedfs.image.tag=$(tag SEAWEEDFS)" \
  --set "tests.image.repository=$(repo BASE)" --set "tests.image.tag=$(tag BASE)" \
  --wait --timeout "$wait" "$@" >/dev/null

# Ready pods are not yet a release that answers: until the API's Service answers /readyz from
# inside the cluster (its DNS name, kube-proxy's rules, and what an upload needs: the API's
# MongoDB, Redis and storage, each through its own Service), say so and wait. After a `cluster-up`
# on kept data the pods come back before the node's Service rules do, and `helm --wait` may still
# read the Ready states they had before the node stopped.
log "waiting until the API answers through its Service"
port=$("$kubectl" -n "$namespace" get service "$release-api" -o jsonpath='{.spec.ports[0].port}')
ask="import urllib.request as u; u.urlopen('http://$release-api:$port/readyz', timeout=3)"
case $wait in *m) seconds=$((${wait%m} * 60)) ;; *) seconds=${wait%s} ;; esac
deadline=$((SECONDS + seconds))
until "$kubectl" -n "$namespace" exec "deploy/$release-api" -- python -c "$ask" >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { log "the API did not answer through its Service in $wait"; exit 1; }
  sleep 1
done
"$kubectl" -n "$namespace" get pods -o wide
cat <<EOF

imgflow is running in namespace $namespace. To reach the API:
  export KUBECONFIG=$KUBECONFIG
  $kubectl -n $namespace port-forward svc/$release-api 8080:80
  export ADMIN_KEY=\$($kubectl -n $namespace get secret $release-connections -o jsonpath='{.data.admin-key}' | base64 -d)
  curl -H "Authorization: Bearer \$ADMIN_KEY" -F file=@picture.jpg -F userId=me http://127.0.0.1:8080/api/image-processing/jobs
Check the install:  $helm test $release -n $namespace
EOF
