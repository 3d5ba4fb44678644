"""The autoscaler's decision, as a pure function of policy, replicas, backlog and time."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest

from imgflow.operator.autoscale import (
    BACKLOG_PER_REPLICA,
    MAX_REPLICAS,
    MIN_REPLICAS,
    SCALE_DOWN_WINDOW,
    SCALE_TO_ZERO,
    Decision,
    History,
    Policy,
    decide,
    parse_policy,
    recommend,
)

ZERO = Policy(
    min_replicas=0, max_replicas=10, backlog_per_replica=10, scale_to_zero=True, scale_down_window_s=30
)
WARM = Policy(
    min_replicas=1, max_replicas=10, backlog_per_replica=10, scale_to_zero=False, scale_down_window_s=30
)


def run(policy: Policy, start: int, samples: Iterable[tuple[float, int]]) -> list[int]:
    """Replicas after each (time, backlog) sample, applying every decision as the operator does."""
    current, history, seen = start, None, []
    for now, backlog in samples:
        decision = decide(policy, current, backlog, now, history)
        current, history = decision.desired, decision.history
        seen.append(current)
    return seen


def every(step: float, backlogs: Iterable[int], start: float = 0.0) -> list[tuple[float, int]]:
    return [(start + i * step, b) for i, b in enumerate(backlogs)]


# --- recommendation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backlog", "expected"),
    [(0, 0), (1, 1), (10, 1), (11, 2), (95, 10), (100, 10), (10_000, 10)],
)
def test_recommendation_is_backlog_per_replica_within_bounds(backlog: int, expected: int) -> None:
    assert recommend(ZERO, backlog) == expected


def test_recommendation_respects_the_minimum() -> None:
    assert recommend(WARM, 0) == 1
    busy_floor = Policy(min_replicas=3, max_replicas=10, scale_to_zero=True)
    assert recommend(busy_floor, 1) == 3  # the floor holds while there is work
    assert recommend(busy_floor, 0) == 0  # and scale-to-zero lets an empty queue go to none


# --- scaling up -----------------------------------------------------------------------------------


def test_wakes_from_zero_on_the_first_message() -> None:
    d = decide(ZERO, current=0, backlog=1, now=100.0, history=((90.0, 0),))
    assert d.desired == 1
    assert d.direction(0) == "up"


def test_scales_up_at_once_regardless_of_the_window() -> None:
    # a long window does not delay scaling up: the first tick with backlog acts
    slow_down = Policy(min_replicas=0, max_replicas=10, scale_to_zero=True, scale_down_window_s=3600)
    assert run(slow_down, 0, [(0, 0), (1, 30)]) == [0, 3]


def test_scale_up_steps_are_bounded() -> None:
    # at most max(4, current) more per decision: 0 -> 4 -> 8 -> 10 (the max)
    assert run(ZERO, 0, every(0.5, [1000, 1000, 1000, 1000])) == [4, 8, 10, 10]
    big = Policy(min_replicas=1, max_replicas=100, backlog_per_replica=1)
    assert run(big, 1, every(0.5, [100] * 6)) == [5, 10, 20, 40, 80, 100]


def test_never_above_max_even_if_already_above() -> None:
    d = decide(WARM, current=25, backlog=10_000, now=0.0, history=None)
    assert d.desired == 10  # bounds are enforced at once, not after a window


def test_raises_to_the_minimum_at_once() -> None:
    floor = Policy(min_replicas=3, max_replicas=10)
    assert decide(floor, current=0, backlog=0, now=0.0, history=None).desired == 3


# --- scaling down ---------------------------------------------------------------------------------


def test_scales_down_only_after_the_window() -> None:
    samples = every(1.0, [50] + [0] * 40)  # 5 replicas' worth, then nothing for 40 s
    replicas = run(ZERO, 0, samples)
    assert replicas[0] == 4  # 5 wanted, 4 is the first step
    # within 30 s of the last busy sample nothing goes down
    assert all(r >= 4 for r in replicas[:31])
    # afterwards it goes down, by halves at most, to zero
    tail = replicas[30:]
    assert tail[-1] == 0
    for before, after in itertools.pairwise(tail):
        assert after >= before // 2 and after <= before


def test_scale_down_uses_the_highest_recommendation_in_the_window() -> None:
    history: History | None = None
    current = 8
    d: Decision | None = None
    # recommendations 8 (t=0), 3 (t=10), 5 (t=20), then 1 from t=25: at t=36 the 8 has left the
    # 30 s window but the 5 has not, so the target is 5, not 1
    for now, backlog in [(0, 80), (10, 30), (20, 50), (25, 10), (30, 10), (36, 10)]:
        d = decide(WARM, current, backlog, now, history)
        history = d.history
    assert d is not None
    assert d.stabilized == 5
    assert d.desired == 5
    later = decide(WARM, 5, 10, 51.0, history)  # the 5 has expired: down, by at most half
    assert (later.stabilized, later.desired) == (1, 3)
    assert decide(WARM, 3, 10, 51.5, later.history).desired == 2


def test_a_first_sight_counts_as_a_recommendation() -> None:
    # an operator that restarts does not scale down what it has not watched for a window
    d = decide(WARM, current=6, backlog=0, now=1000.0, history=None)
    assert d.desired == 6
    assert decide(WARM, 6, 0, 1029.0, d.history).desired == 6
    assert decide(WARM, 6, 0, 1031.0, d.history).desired == 3


def test_zero_window_scales_down_immediately_in_bounded_steps() -> None:
    eager = Policy(min_replicas=0, max_replicas=10, scale_to_zero=True, scale_down_window_s=0)
    # the first sight holds for one tick (it is the window's only sample), then halves
    assert run(eager, 8, every(0.5, [0, 0, 0, 0, 0, 0])) == [8, 4, 2, 1, 0, 0]


def test_min_replicas_hold_without_scale_to_zero() -> None:
    assert run(WARM, 4, every(5.0, [0] * 20))[-1] == 1


def test_scale_to_zero_goes_to_zero_even_with_a_busy_floor() -> None:
    busy_floor = Policy(min_replicas=2, max_replicas=10, scale_to_zero=True, scale_down_window_s=10)
    replicas = run(busy_floor, 0, every(1.0, [5] * 3 + [0] * 20))
    assert replicas[:3] == [2, 2, 2]
    assert replicas[-1] == 0


def test_pending_work_keeps_workers() -> None:
    # the backlog includes delivered-but-unacknowledged entries, so busy workers are not removed
    assert run(ZERO, 3, every(5.0, [21] * 20)) == [3] * 20


# --- no flapping ----------------------------------------------------------------------------------


def test_flapping_backlog_does_not_flap_replicas() -> None:
    # the queue empties and refills every tick (bursty producer, fast workers)
    samples = every(0.5, [40, 0] * 60)
    replicas = run(ZERO, 0, samples)
    assert replicas[0] == 4
    assert replicas[1:] == [4] * (len(replicas) - 1)


def test_noisy_backlog_only_moves_one_way_at_a_time() -> None:
    noisy = [30, 25, 35, 10, 0, 40, 20, 5, 0, 38, 12, 0] * 10
    replicas = run(ZERO, 0, every(0.5, noisy))
    changes = [b - a for a, b in itertools.pairwise(replicas) if b != a]
    assert all(c > 0 for c in changes)  # within the window it only ever goes up
    assert max(replicas) == 4


def test_settles_after_flapping_stops() -> None:
    samples = every(0.5, [40, 0] * 20) + every(0.5, [0] * 100, start=20.0)
    replicas = run(ZERO, 0, samples)
    assert replicas[-1] == 0
    assert max(replicas) == 4


def test_history_stays_short() -> None:
    d = decide(ZERO, 0, 0, 0.0, None)
    for i in range(1, 1000):
        d = decide(ZERO, d.desired, (i * 7919) % 97, i * 0.5, d.history)
    assert len(d.history) <= 10  # only strictly decreasing recommendations are kept


# --- configuration --------------------------------------------------------------------------------


def test_defaults_without_annotations() -> None:
    parsed = parse_policy({})
    assert parsed.policy == Policy(
        min_replicas=1, max_replicas=10, backlog_per_replica=10, scale_to_zero=False, scale_down_window_s=60
    )
    assert parsed.problems == ()


def test_annotations_are_read() -> None:
    parsed = parse_policy(
        {
            MIN_REPLICAS: "0",
            MAX_REPLICAS: "20",
            BACKLOG_PER_REPLICA: "5",
            SCALE_TO_ZERO: "True",
            SCALE_DOWN_WINDOW: "2.5",
            "unrelated.io/x": "y",
        }
    )
    assert parsed.policy == Policy(0, 20, 5, True, 2.5)
    assert parsed.problems == ()


def test_scale_to_zero_makes_min_default_to_zero() -> None:
    assert parse_policy({SCALE_TO_ZERO: "true"}).policy.min_replicas == 0
    assert parse_policy({SCALE_TO_ZERO: "false"}).policy.min_replicas == 1


@pytest.mark.parametrize(
    ("annotations", "problem", "field", "value"),
    [
        ({MIN_REPLICAS: "two"}, "is not a whole number", "min_replicas", 1),
        ({MAX_REPLICAS: "0"}, "is below 1", "max_replicas", 10),
        ({BACKLOG_PER_REPLICA: "-3"}, "is below 1", "backlog_per_replica", 10),
        ({SCALE_TO_ZERO: "yes"}, 'is not "true" or "false"', "scale_to_zero", False),
        ({SCALE_DOWN_WINDOW: "soon"}, "is not a number of seconds", "scale_down_window_s", 60),
        ({SCALE_DOWN_WINDOW: "-1"}, "is not a number of seconds", "scale_down_window_s", 60),
        ({MIN_REPLICAS: "0"}, 'needs imgflow.io/scale-to-zero: "true"', "min_replicas", 1),
        ({MIN_REPLICAS: "5", MAX_REPLICAS: "3"}, "is below imgflow.io/min-replicas=5", "max_replicas", 5),
    ],
)
def test_bad_annotations_are_reported_and_defaulted(
    annotations: dict[str, str], problem: str, field: str, value: object
) -> None:
    parsed = parse_policy(annotations)
    assert len(parsed.problems) == 1
    assert problem in parsed.problems[0]
    assert getattr(parsed.policy, field) == value


def test_min_above_default_max_raises_the_max() -> None:
    assert parse_policy({MIN_REPLICAS: "15"}).policy.max_replicas == 15
