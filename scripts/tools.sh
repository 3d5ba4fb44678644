#!/usr/bin/env bash
# Builds the Go-made tools imgflow runs against (FerretDB, etcd, Kubernetes, helm, CoreDNS, SeaweedFS)
# and checks itself with (promtool, Prometheus, helm-docs, actionlint, kube-router) once per version from the Go module proxy, keeps them in a per-machine cache and links them into
# .tools/bin.
# Usage: scripts/tools.sh [ferretdb|etcd|kube-apiserver|kubectl|kubelet|...|helm|coredns|weed|promtool|prometheus|helm-docs|actionlint|kube-router ...]   (no argument: all of them)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
. "$root/scripts/versions.env"
cache=${IMGFLOW_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgflow/tools}
bin=$root/.tools/bin
mkdir -p "$cache" "$bin"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

log() { echo "tools: $*" >&2; }

# link NAME FILE: make .tools/bin/NAME point at a cached binary.
link() { ln -sfn "$2" "$bin/$1"; }

# wrapper DIR: an empty module to build someone else's command in, so their go.mod rules apply to us.
wrapper() {
  rm -rf "$1" && mkdir -p "$1" && cd "$1" && go mod init imgflow.local/tools >/dev/null 2>&1
}

build_ferretdb() {
  # the cached binary's name carries the patches' hash: a changed patch builds anew
  local patches=$root/scripts/patches/ferretdb-id-index.patch
  local out=$cache/ferretdb-$FERRETDB_VERSION-$(cat "$patches" | sha256sum | cut -c1-12)
  if [ ! -x "$out" ]; then
    log "building FerretDB $FERRETDB_VERSION (a few minutes, once)"
    # FerretDB reads its version from an embedded build/version/version.txt that its release
    # tooling generates and the published module lacks, and Go records its module as the main one,
    # so the binary panics at start. Vendor it into a wrapper module and write that file. The
    # vendored source also takes our patch (scripts/patches: _id lookups from the _id index).
    (wrapper "$cache/src/ferretdb" &&
      go get -tool "github.com/FerretDB/FerretDB/cmd/ferretdb@$FERRETDB_VERSION" &&
      go mod vendor &&
      echo "$FERRETDB_VERSION" >vendor/github.com/FerretDB/FerretDB/build/version/version.txt &&
      patch -p1 --forward --silent -d vendor/github.com/FerretDB/FerretDB <"$patches" &&
      go build -mod=vendor -o "$out" github.com/FerretDB/FerretDB/cmd/ferretdb)
  fi
  link ferretdb "$out"
}

build_etcd() {
  local out=$cache/etcd-$ETCD_VERSION
  if [ ! -x "$out" ]; then
    log "building etcd $ETCD_VERSION (a few minutes, once)"
    (wrapper "$cache/src/etcd" &&
      go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" &&
      go build -o "$out" go.etcd.io/etcd/server/v3)
  fi
  link etcd "$out"
}

# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0 and
# replaces them with local directories, which a dependent module cannot see. Replace each with its
# published twin, v0.<minor>.<patch> for v1.<minor>.<patch>.
kubernetes_wrapper() {
  local dir=$cache/src/kubernetes-$KUBERNETES_VERSION staging gomod
  if [ -f "$dir/.ready" ]; then echo "$dir"; return; fi
  staging=v0.${KUBERNETES_VERSION#v1.}
  (wrapper "$dir" &&
    gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])') &&
    awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u |
      while read -r m; do go mod edit -replace "$m=$m@$staging"; done &&
    go get $(printf "k8s.io/kubernetes/cmd/%s@$KUBERNETES_VERSION " $KUBERNETES_COMMANDS) &&
    touch .ready) >&2
  echo "$dir"
}

build_kube() {
  local name=$1 out=$cache/$1-$KUBERNETES_VERSION dir minor pkg=version
  if [ ! -x "$out" ]; then
    log "building $name $KUBERNETES_VERSION (kube-apiserver: 10-25 minutes on 2 cores, once)"
    dir=$(kubernetes_wrapper)
    minor=${KUBERNETES_VERSION#v1.}
    minor=${minor%%.*}
    # The version ldflags make /version and `kubectl version` tell the truth instead of v0.0.0.
    local ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
      ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    (cd "$dir" && go build -ldflags "$ld" -o "$out" "k8s.io/kubernetes/cmd/$name")
  fi
  link "$name" "$out"
}

build_helm() {
  # "-k8s" names the build that carries the Kubernetes version helm was made against; without it
  # helm assumes v1.20 and refuses charts that require anything newer.
  local out=$cache/helm-$HELM_VERSION-k8s minor
  if [ ! -x "$out" ]; then
    log "building helm $HELM_VERSION (a few minutes, once)"
    (wrapper "$cache/src/helm" &&
      go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" &&
      minor=$(go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2) &&
      go build -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
        -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
        -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
        -o "$out" helm.sh/helm/v3/cmd/helm)
  fi
  link helm "$out"
}

# CoreDNS with only the plugins a single-node cluster needs: it answers cluster.local from the
# Kubernetes API and, having no `forward` plugin, never sends a query off the machine.
build_coredns() {
  local out=$cache/coredns-$COREDNS_VERSION
  if [ ! -x "$out" ]; then
    log "building CoreDNS $COREDNS_VERSION (a few minutes, once)"
    (wrapper "$cache/src/coredns" &&
      cat >main.go <<'GO' &&
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The order in which the plugins see a query, as in CoreDNS's plugin.cfg.
func init() {
	dnsserver.Directives = []string{"reload", "ready", "health", "errors", "loadbalance", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
      go get "github.com/coredns/coredns@$COREDNS_VERSION" &&
      go mod tidy &&
      go build -ldflags "-s -w" -o "$out" .)
  fi
  link coredns "$out"
}

# SeaweedFS's `weed`: the S3-compatible server the tests and the bench run the s3 storage backend
# against. SeaweedFS publishes no Go-module releases (its tags are not semver), so the version is the
# proxy's pseudo-version of a commit.
build_seaweedfs() {
  local out=$cache/weed-$SEAWEEDFS_VERSION
  if [ ! -x "$out" ]; then
    log "building SeaweedFS $SEAWEEDFS_VERSION (10-20 minutes on 2 cores, once)"
    (wrapper "$cache/src/seaweedfs" &&
      go get "github.com/seaweedfs/seaweedfs/weed@$SEAWEEDFS_VERSION" &&
      go build -ldflags "-s -w" -o "$out" github.com/seaweedfs/seaweedfs/weed)
  fi
  link weed "$out"
}

# build_command NAME PACKAGE VERSION [LDFLAGS]: a command whose module builds as published.
build_command() {
  # build_command NAME PACKAGE VERSION [LDFLAGS [TAGS]]: the tags are in the cached binary's name
  local name=$1 pkg=$2 version=$3 ld=${4:-} tags=${5:-}
  local out=$cache/$1-$3${tags:+-$tags}
  if [ ! -x "$out" ]; then
    log "building $name $version${tags:+ ($tags)} (once)"
    (wrapper "$cache/src/$name" &&
      GOFLAGS="$GOFLAGS -tags=$tags" go get "$pkg@$version" &&
      go build -tags="$tags" -ldflags "-s -w $ld" -o "$out" "$pkg")
  fi
  link "$name" "$out"
}

# kube-router: built as its own module, in Go's download cache, with the dependencies its go.mod
# names (no wrapper: nothing of ours is added to its build).
build_kube_router() {
  local out=$cache/kube-router-$KUBE_ROUTER_VERSION dir
  if [ ! -x "$out" ]; then
    log "building kube-router $KUBE_ROUTER_VERSION (a few minutes, once)"
    dir=$(go mod download -json "github.com/cloudnativelabs/kube-router/v2@$KUBE_ROUTER_VERSION" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    (cd "$dir" && go build -ldflags "-s -w" -o "$out" ./cmd/kube-router)
  fi
  link kube-router "$out"
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(ferretdb etcd $KUBERNETES_COMMANDS helm coredns weed promtool prometheus helm-docs actionlint kube-router)
for t in "${want[@]}"; do
  case $t in
    ferretdb) build_ferretdb ;;
    etcd) build_etcd ;;
    kube-apiserver | kubectl | kube-controller-manager | kube-scheduler | kubelet | kube-proxy) build_kube "$t" ;;
    helm) build_helm ;;
    coredns) build_coredns ;;
    weed | seaweedfs) build_seaweedfs ;;
    # promtool checks and unit-tests deploy/prometheus/alerts.yaml and parses the dashboard's queries
    # (module v0.316.0 is Prometheus 3.16.0, which `promtool --version` should say); the server
    # runs the alerts against the real processes' metrics in tests/test_prometheus.py and scrapes
    # the chart's pods on the node (tests/node/test_monitoring_on_node.py). Without the
    # service-discovery plugins (remove_all_sd), whose cloud SDKs were most of a cold build, but
    # Kubernetes' for the server, which discovers the pods on the node
    promtool | prometheus) v=${PROMETHEUS_VERSION#v0.} tags=remove_all_sd
      [ "$t" = promtool ] || tags+=,enable_kubernetes_sd
      build_command "$t" "github.com/prometheus/prometheus/cmd/$t" \
        "$PROMETHEUS_VERSION" "-X github.com/prometheus/common/version.Version=${v:0:1}.${v:1}" "$tags" ;;
    # helm-docs writes the chart README's values table from values.yaml's comments
    helm-docs) build_command helm-docs github.com/norwoodj/helm-docs/cmd/helm-docs "$HELM_DOCS_VERSION" \
      "-X main.version=${HELM_DOCS_VERSION#v}" ;;
    actionlint) build_command actionlint github.com/rhysd/actionlint/cmd/actionlint "$ACTIONLINT_VERSION" \
      "-X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION" ;;
    # the node tests' NetworkPolicy enforcer (tests/node/test_network_policy.py)
    kube-router) build_kube_router ;;
    *) echo "tools: unknown tool $t" >&2; exit 2 ;;
  esac
done
