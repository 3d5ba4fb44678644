"""Nothing one client sends takes a replica down (issue 19): while one key attacks the API, another
tenant's jobs still go create → completed → thumbnail, and not only once the attacker stops (a
round trip ends while the attack goes on), its reads are answered (no 5xx, nothing left unanswered
for 30 s), /readyz stays 200, and the API lives on under its memory limit.

One stack serves every attack: an API process in a cgroup v1 memory group of the chart's API limit
(as its container would be: past it, the kernel kills it), a worker, Redis, the MongoDB-wire server
and SeaweedFS (the s3 backend, which the unread-thumbnail attack needs). Each attack
(imgflow.harness.attacks) is bounded and stops by itself; an API the kernel killed is started again
before the next one, so each attack is judged alone. The victim's latencies are printed per attack
(``pytest -rP`` shows them); how much slower it is answered under attack is bench/isolation.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgflow.harness import images
from imgflow.harness.attacks import ATTACKS, Target, measure, prepare
from imgflow.harness.client import api_client, make_key, submit, wait_finished
from imgflow.harness.memory_groups import chart_limit, memory_group, oom_kills, peak_rss, reset_peak_rss
from imgflow.harness.servers import S3Server, Server, wait_for_port
from tests.conftest import Processes, make_settings, on_s3

API_LIMIT = chart_limit("api")


@dataclass
class Replica:
    target: Target
    api: Server
    cgroup: Path
    victim_key: str
    victim_job: str


@pytest.fixture(scope="module")
def api_cgroup() -> Iterator[Path]:
    with memory_group(API_LIMIT) as group:
        yield group


@pytest.fixture(scope="module")
async def replica(
    redis_url: str, mongodb_url: str, s3: S3Server, api_cgroup: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Replica]:
    settings = on_s3(make_settings(redis_url, mongodb_url), s3)
    processes = Processes(tmp_path_factory.mktemp("isolation-logs"))
    try:
        api, base_url = processes.start_api_in(settings, api_cgroup)
        processes.start_worker(settings)
        async with api_client(base_url, timeout=30) as admin:
            attacker = await make_key(admin, "attacker", "jobs:read", "jobs:write")
            victim = await make_key(admin, "victim", "jobs:read", "jobs:write")
        target = Target(base_url, settings, attacker, "attacker")
        await prepare(target)
        async with api_client(base_url, key=victim, timeout=30) as client:
            reply = await submit(client, images.jpeg(320, 240), user_id="victim")
            assert reply.status_code == 202, reply.text
            job_id = reply.json()["jobId"]
            assert (await wait_finished(client, job_id))["status"] == "completed"
        yield Replica(target, api, api_cgroup, victim, job_id)
    finally:
        processes.stop_all()


@pytest.mark.parametrize("attack", ATTACKS)
async def test_another_tenant_is_served_while_one_key_attacks(replica: Replica, attack: str) -> None:
    api = replica.api
    if not api.alive:  # the kernel killed it in an earlier attack: that one failed, this one starts anew
        api.start()
        wait_for_port(replica.target.port, process=api.process)
    reset_peak_rss(api.pid)
    kills = oom_kills(replica.cgroup)
    replica.target.answers.clear()

    victim = await measure(
        replica.target.base_url, replica.victim_key, replica.victim_job, ATTACKS[attack](replica.target)
    )
    print(f"\n{attack}: attacker got {dict(replica.target.answers)}; victim {victim.summary()}")

    assert victim.failures == [], victim.failures
    assert victim.during_attack >= 1, "the victim's jobs waited for the attack to end"
    assert api.alive, api.tail()
    assert oom_kills(replica.cgroup) == kills
    peak = peak_rss(api.pid)
    print(f"{attack}: API peak RSS {peak >> 20} MiB (limit {API_LIMIT >> 20} MiB)")
    assert peak < API_LIMIT
    async with api_client(replica.target.base_url, timeout=30) as client:
        assert (await client.get("/readyz")).status_code == 200
