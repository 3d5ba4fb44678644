# imgflow's interface. Each target sets up what a fresh machine lacks (scripts/setup.sh) and is
# quick the second time. See README.md.
.PHONY: setup demo up down test lint bench cluster-up cluster-down kind-up

setup:
	@scripts/setup.sh

demo: setup            ## the main job: whole stack on loopback, sample images through the HTTP API
	@uv run --frozen python -m scripts.stack demo

up: setup              ## the same stack in the background (API on http://127.0.0.1:8000)
	@uv run --frozen python -m scripts.stack up

down:                  ## stop what `make up` started
	@uv run --frozen python -m scripts.stack down

test: setup cluster-tools   ## the whole suite against real Redis, MongoDB-wire server and kube-apiserver
	@uv run --frozen pytest

lint: setup
	@uv run --frozen ruff format --check . && uv run --frozen ruff check . && uv run --frozen mypy

bench: setup           ## benchmarks: figures as ratios against a baseline measured in the same run
	@bench/run.sh

cluster-tools:
	@scripts/tools.sh etcd kube-apiserver kubectl helm

cluster-up: setup cluster-tools   ## a local Kubernetes control plane with the ImageJob CRD (.cluster/kubeconfig)
	@scripts/cluster.sh up

cluster-down:
	@scripts/cluster.sh down

kind-up:               ## for users with Docker: a kind cluster and `skaffold run`
	@deploy/kind/up.sh
