"""What imgflow's tests, bench and local stack (scripts/stack.py) share, so that none of them
imports another: where the work tree is (``paths``), real servers on loopback (``servers``,
``ferretdb_pg``), the Kubernetes control plane and the operator under its chart RBAC (``kube``,
``operator``, ``helm_chart``), images made with libvips (``images``, ``hostile``), an API client
(``client``), memory groups (``memory_groups``), and the scenarios a test and a bench both run
(``attacks``, ``faults``, ``autoscale``, ``ops``). A workspace member of the dev group only: no
image installs it."""
