# imgflow's interface. Each target sets up what a fresh machine lacks (scripts/setup.sh) and is
# quick the second time. See README.md.
.PHONY: setup demo up down test lint bench images cluster-tools cluster-up cluster-down deploy kind-up

setup:
	@scripts/setup.sh

demo: setup            ## the main job: whole stack on loopback, sample images sent with the imgflow CLI
	@uv run --frozen python -m scripts.stack demo

up: setup              ## the same stack in the background (API on http://127.0.0.1:8000)
	@uv run --frozen python -m scripts.stack up

down:                  ## stop what `make up` started
	@uv run --frozen python -m scripts.stack down

test: setup images        ## the whole suite: real Redis, MongoDB-wire server, and a real Kubernetes node
	@uv run --frozen pytest

lint: setup            ## ruff, mypy; the chart README is helm-docs' output; the CI workflows pass actionlint
	@scripts/tools.sh helm-docs actionlint
	@uv run --frozen ruff format --check . && uv run --frozen ruff check . && uv run --frozen mypy
	@.tools/bin/helm-docs --dry-run -c deploy/helm/imgflow -s file -l warning | diff -u deploy/helm/imgflow/README.md - \
	  || { echo "deploy/helm/imgflow/README.md is stale: run .tools/bin/helm-docs -c deploy/helm/imgflow -s file -l warning" >&2; exit 1; }
	@.tools/bin/actionlint -no-color -shellcheck= -pyflakes=

bench: setup           ## benchmarks: figures as ratios against a baseline measured in the same run
	@bench/run.sh

cluster-tools:
	@scripts/tools.sh

images: cluster-tools    ## the api, worker, operator images and the node's own (no Docker: buildah, scripts/images.sh)
	@scripts/images.sh build

cluster-up: setup images   ## a one-node Kubernetes cluster on this machine (.cluster/kubeconfig)
	@scripts/cluster.sh up

cluster-down:            ## stop it; nothing of it is left running (data kept: `scripts/cluster.sh down --purge`)
	@scripts/cluster.sh down

deploy: cluster-up       ## the chart as release imgflow in namespace imgflow on that node, with local images
	@scripts/deploy.sh

kind-up:               ## for users with Docker: a kind cluster and `skaffold run`
	@deploy/kind/up.sh
