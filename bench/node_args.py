"""What every bench run on the local node is told: where its release is (``--kubeconfig``,
``--namespace``, ``--release``), whether to install it first (``--install``) and where to write
its figures (``--json``); and the install itself, with ``make deploy``'s script."""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from imgflow.harness.paths import ROOT


def node_parser(doc: str | None, install_help: str) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc`` (the bench module's docstring), with
    the node's arguments; the bench adds its own."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, default=ROOT / ".cluster" / "kubeconfig")
    parser.add_argument("--namespace", default="imgflow")
    parser.add_argument("--release", default="imgflow")
    parser.add_argument("--install", action="store_true", help=install_help)
    parser.add_argument("--json", type=Path)
    return parser


def where(args: argparse.Namespace) -> tuple[Path, str, str]:
    """The release the arguments name: kubeconfig, namespace, release."""
    return args.kubeconfig, args.namespace, args.release


def deploy(args: argparse.Namespace, values: Sequence[str]) -> None:
    """Install or upgrade the release the arguments name, ``values`` given to helm; the node's
    cluster dir is the kubeconfig's."""
    env = {"CLUSTER_DIR": str(args.kubeconfig.parent), "NAMESPACE": args.namespace, "RELEASE": args.release}
    subprocess.run([str(ROOT / "scripts" / "deploy.sh"), *values], env={**os.environ, **env}, check=True)
