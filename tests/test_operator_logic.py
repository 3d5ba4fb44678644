"""The operator's pure parts: ImageJob spec and status, and pods' deletion cost. No cluster."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from imgflow.core.jobs import Job, JobStatus, UrlSource
from imgflow.core.options import InvalidOption
from imgflow.core.outputs import Fit, OutputFormat
from imgflow.operator.imagejob import (
    SourceItem,
    SourceState,
    check_tenant,
    expires_at,
    job_id_for,
    namespace_tenant,
    parse_sources,
    recorded_sources,
    refresh,
    refused,
    status_patch,
    summarize,
    thumbnail_spec,
)
from imgflow.operator.podcost import (
    COSTS_HOLD_MAX_S,
    COSTS_SEEN_S,
    PodView,
    deletion_costs,
    hold_scale_down,
    parse_heartbeats,
    reorders,
)
from imgflow.operator.settings import OperatorSettings

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def state(i: int, status: JobStatus, error: str | None = None) -> SourceState:
    return SourceState(i, f"https://example.com/{i}.jpg", f"job-{i}", status, error)


# --- ImageJob spec --------------------------------------------------------------------------------


def test_job_ids_are_stable_per_image_job_and_index() -> None:
    assert job_id_for("uid-1", 0) == job_id_for("uid-1", 0)
    ids = {job_id_for(uid, i) for uid in ("uid-1", "uid-2") for i in range(3)}
    assert len(ids) == 6
    Job(job_id=job_id_for("uid-1", 0), user_id="u", source=UrlSource(url="https://x/y"))  # a valid job id


def test_sources_and_thumbnail_are_read_with_the_crd_defaults() -> None:
    spec = {"userId": "u", "sources": [{"url": "https://a/b.jpg"}, {"uploadId": "abc"}]}
    assert parse_sources(spec) == [SourceItem(0, url="https://a/b.jpg"), SourceItem(1, upload_id="abc")]
    thumb = thumbnail_spec(spec)
    assert (thumb.width, thumb.height, thumb.fit, thumb.format) == (100, 100, Fit.cover, OutputFormat.jpeg)
    chosen = thumbnail_spec({"operations": {"thumbnail": {"width": 64, "fit": "inside", "format": "png"}}})
    assert (chosen.width, chosen.height, chosen.fit, chosen.format) == (64, 100, Fit.inside, OutputFormat.png)


def test_an_image_job_acts_for_its_namespaces_tenant_whatever_its_spec_says() -> None:
    tenants = {"shop": "acme"}
    assert namespace_tenant("shop", tenants, "default") == "acme"
    assert namespace_tenant("elsewhere", tenants, "default") == "default"
    check_tenant({"userId": "u"}, "shop", "acme")  # naming none is fine
    check_tenant({"tenant": "acme"}, "shop", "acme")  # and so is repeating it
    with pytest.raises(InvalidOption, match=r"spec\.tenant 'globex' is not the tenant of namespace 'shop'"):
        check_tenant({"tenant": "globex"}, "shop", "acme")
    with pytest.raises(ValidationError):  # the allow-list names tenants a key could have
        OperatorSettings(namespace_tenants={"shop": "Not A Tenant"})


# --- ImageJob status ------------------------------------------------------------------------------


def test_running_until_every_source_finished() -> None:
    states = [state(0, JobStatus.completed), state(1, JobStatus.processing), state(2, JobStatus.pending)]
    summary = summarize(3, states)
    assert (summary.phase, summary.progress, summary.finished) == ("Running", "1/3", False)
    patch = status_patch(summary, states, generation=1, started_at="2025-01-02T03:00:00Z", now=NOW)
    assert "finishedAt" not in patch and "conditions" not in patch
    assert patch["sources"][1] == {
        "index": 1,
        "source": "https://example.com/1.jpg",
        "jobId": "job-1",
        "status": "processing",
    }


def test_succeeded_when_all_completed() -> None:
    states = [state(i, JobStatus.completed) for i in range(2)]
    patch = status_patch(summarize(2, states), states, generation=1, started_at="s", now=NOW)
    assert (patch["phase"], patch["succeeded"], patch["failed"]) == ("Succeeded", 2, 0)
    assert patch["finishedAt"] == "2025-01-02T03:04:05Z"
    (condition,) = patch["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Complete",
        "True",
        "AllSucceeded",
    )


def test_failed_once_all_finished_and_any_failed() -> None:
    states = [
        state(0, JobStatus.completed),
        state(1, JobStatus.failed, "HTTP 404"),
        state(2, JobStatus.processing),
    ]
    assert summarize(3, states).phase == "Running"  # a failure does not end a batch early
    states[2] = state(2, JobStatus.failed, "too large")
    patch = status_patch(summarize(3, states), states, generation=1, started_at="s", now=NOW)
    assert (patch["phase"], patch["progress"], patch["failed"]) == ("Failed", "1/3", 2)
    (condition,) = patch["conditions"]
    assert condition["type"] == "Failed"
    assert (
        condition["message"] == "2 of 3 sources failed. First: source 1 (https://example.com/1.jpg): HTTP 404"
    )
    assert patch["sources"][1]["error"] == "HTTP 404"


def test_a_cancelled_source_finishes_the_batch_as_failed() -> None:
    states = [state(0, JobStatus.completed), state(1, JobStatus.cancelled)]
    patch = status_patch(summarize(2, states), states, generation=1, started_at="s", now=NOW)
    assert (patch["phase"], patch["progress"], patch["failed"]) == ("Failed", "1/2", 1)
    (condition,) = patch["conditions"]
    assert (
        condition["message"]
        == "1 of 2 sources failed. First: source 1 (https://example.com/1.jpg): cancelled"
    )


def test_refused_sources_have_no_job_and_count_as_failed() -> None:
    gone = refused(SourceItem(0, url="http://10.0.0.1/"), "Refused: private")
    assert gone.to_status() == {
        "index": 0,
        "source": "http://10.0.0.1/",
        "status": "failed",
        "error": "Refused: private",
    }
    assert summarize(1, [gone]).phase == "Failed"


def test_an_existing_finish_time_is_kept() -> None:
    states = [state(0, JobStatus.completed)]
    patch = status_patch(
        summarize(1, states), states, generation=1, started_at="s", now=NOW, finished_at="earlier"
    )
    assert patch["finishedAt"] == "earlier"


def test_status_round_trips_and_refreshes_from_jobs() -> None:
    states = [state(0, JobStatus.pending), refused(SourceItem(1, url="http://x"), "no")]
    patch = status_patch(summarize(2, states), states, generation=1, started_at="s", now=NOW)
    recorded = recorded_sources(json.loads(json.dumps(patch)))
    assert list(recorded.values()) == states
    done = Job(
        job_id="job-0", user_id="u", source=UrlSource(url="https://x"), status=JobStatus.failed, error="bad"
    )
    fresh = refresh(recorded.values(), {"job-0": done})
    assert fresh[0].status is JobStatus.failed and fresh[0].error == "bad"
    assert fresh[1] == states[1]


def test_expiry_only_for_finished_jobs_with_a_ttl() -> None:
    finished = {"phase": "Succeeded", "finishedAt": "2025-01-02T03:04:05Z"}
    assert expires_at({"ttlSecondsAfterFinished": 30}, finished) == datetime(2025, 1, 2, 3, 4, 35, tzinfo=UTC)
    assert expires_at({"ttlSecondsAfterFinished": 0}, finished) == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert expires_at({}, finished) is None
    assert expires_at({"ttlSecondsAfterFinished": 30}, {"phase": "Running"}) is None


# --- deletion cost --------------------------------------------------------------------------------


def test_the_pod_holding_the_longest_running_job_costs_most() -> None:
    # A ReplicaSet told to keep one of these removes the cheapest first: the pod finishing two
    # young short jobs goes, the one 12 s into a long job stays.
    values = [
        json.dumps({"pod": "long", "inflight": 1, "running_s": 12}),
        json.dumps({"pod": "short", "inflight": 2, "running_s": 1}),
        json.dumps({"pod": "idle", "inflight": 0, "running_s": 0}),
    ]
    costs = parse_heartbeats(values)
    assert costs["long"] > costs["short"] > costs["idle"] == 0


def test_heartbeats_give_each_pod_its_oldest_job_and_junk_is_skipped() -> None:
    values = [
        json.dumps({"pod": "w-1", "inflight": 2, "running_s": 3}).encode(),
        json.dumps({"pod": "w-1", "inflight": 1, "running_s": 7}),  # its container's previous run
        json.dumps({"pod": "w-2", "inflight": 0, "running_s": 0}),
        json.dumps({"pod": "w-3", "inflight": 1, "running_s": 0}),  # just took a job: above idle
        json.dumps({"pod": "w-4", "inflight": 2}),  # a worker that does not say how long
        None,
        b"not json",
        json.dumps({"inflight": 3}),
        json.dumps(["w-5", 1]),
    ]
    assert parse_heartbeats(values) == {"w-1": 8, "w-2": 0, "w-3": 1, "w-4": 1}


def test_costs_are_set_for_selected_pods_only() -> None:
    worker = {"app": "worker"}
    pods = [
        PodView("w-1", {"app": "worker", "pod-template-hash": "x"}, None),  # busy, unannotated
        PodView("w-2", worker, None),  # idle, unannotated: nothing to do
        PodView("w-3", worker, "4"),  # was busy, now idle
        PodView("w-4", worker, "2"),  # unchanged
        PodView("w-5", worker, "1"),  # no heartbeat any more
        PodView("api-1", {"app": "api"}, None),  # not a worker
    ]
    costs = {"w-1": 2, "w-2": 0, "w-3": 0, "w-4": 2, "api-1": 9}
    assert deletion_costs(costs, pods, [worker]) == {"w-1": 2, "w-3": 0, "w-5": 0}
    assert deletion_costs(costs, pods, []) == {}
    assert deletion_costs(costs, pods, [{}]) == {}  # an empty selector selects nothing


def test_a_pod_taking_a_job_or_going_idle_changes_the_order_a_job_running_on_does_not() -> None:
    worker = {"app": "worker"}
    pods = [PodView("idle", worker, None), PodView("long", worker, "6"), PodView("short", worker, "3")]
    assert reorders(pods, {"idle": 1})  # just took a job: no longer among the first to go
    assert reorders(pods, {"short": 0})  # just went idle: now the first to go
    assert reorders(pods, {"long": 2})  # its oldest job ended, a younger one runs on
    assert not reorders(pods, {"long": 8, "short": 5})  # both jobs ran on: same order
    assert not reorders(pods, {})
    assert reorders([PodView("odd", worker, "x")], {"odd": 2})  # an unreadable cost counts as 0


def test_a_scale_down_waits_until_the_replica_set_can_have_seen_a_new_order() -> None:
    # The autoscaler's ticks, 0.5 s apart: a pod took the long job at 10.0 and its cost went from
    # 0 to 1 then; a scale-down due at 10.1 waits until COSTS_SEEN_S after that, not longer.
    reordered, held = 10.0, None
    ticks = [10.1 + 0.5 * k for k in range(6)]
    acted = []
    for now in ticks:
        if hold_scale_down(reordered, held, now):
            held = held if held is not None else now
        else:
            acted.append(now)
    assert acted[0] >= reordered + COSTS_SEEN_S
    assert acted[0] - reordered < COSTS_SEEN_S + 0.5
    assert not hold_scale_down(None, None, 10.0)  # nothing reordered since the operator started


def test_costs_that_keep_changing_hold_a_scale_down_back_only_so_long() -> None:
    # Pods that keep taking and finishing jobs reorder the costs on every tick.
    held = 100.0
    assert hold_scale_down(100.0 + COSTS_HOLD_MAX_S - 0.5, held, 100.0 + COSTS_HOLD_MAX_S - 0.1)
    assert not hold_scale_down(100.0 + COSTS_HOLD_MAX_S - 0.5, held, 100.0 + COSTS_HOLD_MAX_S)
