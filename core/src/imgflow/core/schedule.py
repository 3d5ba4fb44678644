"""Who works next: weighted fair sharing of the workers between tenants, measured in job cost.

Design. Every job still has one message on the one stream (``imgflow.core.queue``: published,
recorded, reclaimed and acknowledged as before); the entry also carries its tenant, priority and
cost. Workers no longer read the stream in order. A worker asks ``take``, one Lua script that:

1. parks every entry not yet delivered: reads it into the group as the consumer ``PARKED`` (so it
   stays pending, counted in the backlog, and never lost) and appends ``cost id`` to its tenant's
   lane (``lane:<tenant>:<priority>``), the tenant entering the ready set if it was not there;
2. picks the ready tenant with the least virtual time that is under its in-flight cap, takes the
   head of its ``interactive`` lane (else ``batch``) and XCLAIMs that entry to the worker;
3. advances the tenant's virtual time by cost / weight (start-time fair queueing: a tenant coming
   back starts at the clock, the virtual time of the last job taken, so idle time is not banked).

Over any window in which tenants have work waiting, each is given worker time (estimated by the
cost) in proportion to its weight, and a tenant with one small job waits for at most one job of
each busier tenant. A taken entry is listed in its tenant's ``running`` set until acknowledged:
that is the tenant's count of jobs in flight across all workers.

What stays as it was: at-least-once (an entry is acknowledged only after its job's outcome is
stored), leases, give-back, retries (published as any job), and the backlog the autoscaler reads
(parked entries are pending in the group: lag + pending is still everything unfinished). Parked
entries stay idle on purpose, so the workers reclaim a dead worker's entries consumer by consumer
(``reclaim``), never the parked ones: XAUTOCLAIM, which cannot tell them apart, is not used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from imgflow.core.settings import Settings

PARKED = "~parked"  # the consumer that holds entries waiting in a lane

# Parking (step 1), shared by _TAKE and _WAITING. KEYS[1]: the stream; ARGV[1]: group, ARGV[3]:
# key prefix, ARGV[6]: the parked consumer. Beside the lanes it keeps each tenant's cost waiting
# (``queued``, taken off as entries leave a lane) and the cost it ever brought (``work``: the
# ranking of imgflow.core.tenant_metrics). Sets ``parked`` to the number of entries parked.
_PARK = """
local stream, group, prefix = KEYS[1], ARGV[1], ARGV[3]
local ready, vtimes, clock = prefix .. 'ready', prefix .. 'vtime', prefix .. 'clock'
local function lane(t, p) return prefix .. 'lane:' .. t .. ':' .. p end
local function running(t) return prefix .. 'running:' .. t end
local function unqueue(t, cost)
  local queued = prefix .. 'queued'
  if redis.call('HINCRBY', queued, t, -cost) <= 0 then redis.call('HDEL', queued, t) end
end
-- at most 1000 a call, so one call never holds Redis long; a backlog is parked within a few takes
local new = redis.call('XREADGROUP', 'GROUP', group, ARGV[6], 'COUNT', 1000, 'STREAMS', stream, '>')
local parked = 0
if new then
  for _, entry in ipairs(new[1][2]) do
    local f = {}
    for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
    local t, p = f['tenant'] or 'default', f['priority'] or 'interactive'
    if p ~= 'batch' then p = 'interactive' end
    local cost = tonumber(f['cost'] or '1') or 1
    redis.call('RPUSH', lane(t, p), cost .. ' ' .. entry[1])
    redis.call('HINCRBY', prefix .. 'queued', t, cost)
    redis.call('ZINCRBY', prefix .. 'work', cost, t)
    if not redis.call('ZSCORE', ready, t) then
      local now = tonumber(redis.call('GET', clock) or '0')
      local start = math.max(now, tonumber(redis.call('HGET', vtimes, t) or '0'))
      redis.call('ZADD', ready, start, t)
    end
    parked = parked + 1
  end
end
"""

# KEYS: the stream. ARGV: group, consumer, key prefix, in-flight cap per tenant (0: none), weights
# (JSON object, tenant -> weight; missing: 1), the parked consumer. Returns {id, fields} or
# {false, false}.
_TAKE = (
    _PARK
    + """
local me, cap, weights = ARGV[2], tonumber(ARGV[4]), cjson.decode(ARGV[5])
local tenants = redis.call('ZRANGE', ready, 0, -1, 'WITHSCORES')
for i = 1, #tenants, 2 do
  local t, v = tenants[i], tonumber(tenants[i + 1])
  if cap <= 0 or redis.call('SCARD', running(t)) < cap then
    for _, p in ipairs({'interactive', 'batch'}) do
      while true do
        local head = redis.call('LPOP', lane(t, p))
        if not head then break end
        local space = string.find(head, ' ')
        local cost, id = tonumber(string.sub(head, 1, space - 1)) or 1, string.sub(head, space + 1)
        unqueue(t, cost)
        local claimed = redis.call('XCLAIM', stream, group, me, 0, id)
        local after = v + cost / (tonumber(weights[t]) or 1)
        redis.call('SET', clock, v)
        if redis.call('LLEN', lane(t, 'interactive')) + redis.call('LLEN', lane(t, 'batch')) == 0 then
          redis.call('ZREM', ready, t)
          redis.call('HSET', vtimes, t, after)
        else
          redis.call('ZADD', ready, after, t)
        end
        if claimed[1] then
          redis.call('SADD', running(t), id)
          redis.call('HSET', prefix .. 'holder', id, t)
          return {claimed[1][1], claimed[1][2]}
        end
        v = after  -- the entry was deleted (trimmed, or acknowledged elsewhere): the next one
      end
    end
    if redis.call('LLEN', lane(t, 'interactive')) + redis.call('LLEN', lane(t, 'batch')) == 0 then
      redis.call('ZREM', ready, t)
      redis.call('HSET', vtimes, t, v)
    end
  end
end
return {false, false}
"""
)

# KEYS and ARGV as _TAKE's (ARGV[2], [4], [5] unused). Parks, then returns the number parked and,
# per tenant with jobs waiting: tenant, jobs, cost, its oldest entry's id (the heads of its lanes).
_WAITING = (
    _PARK
    + """
local found = {parked}
for _, t in ipairs(redis.call('ZRANGE', ready, 0, -1)) do
  local oldest = false
  for _, p in ipairs({'interactive', 'batch'}) do
    local head = redis.call('LINDEX', lane(t, p), 0)
    if head then
      local id = string.sub(head, string.find(head, ' ') + 1)
      if not oldest or tonumber(string.match(id, '^%d+')) < tonumber(string.match(oldest, '^%d+')) then
        oldest = id
      end
    end
  end
  if oldest then
    local jobs = redis.call('LLEN', lane(t, 'interactive')) + redis.call('LLEN', lane(t, 'batch'))
    table.insert(found, {t, jobs, tonumber(redis.call('HGET', prefix .. 'queued', t) or '0'), oldest})
  end
end
return found
"""
)

# KEYS: none. ARGV: prefix, then entry ids. A taken entry is no longer in its tenant's flight.
_DONE = """
local prefix = ARGV[1]
for i = 2, #ARGV do
  local t = redis.call('HGET', prefix .. 'holder', ARGV[i])
  if t then
    redis.call('SREM', prefix .. 'running:' .. t, ARGV[i])
    redis.call('HDEL', prefix .. 'holder', ARGV[i])
  end
end
return 0
"""


def prefix(settings: Settings) -> str:
    return f"{settings.stream}:sched:"


@dataclass(frozen=True)
class Taken:
    entry_id: bytes
    fields: dict[bytes, bytes]


async def take(redis: Redis, settings: Settings, consumer: str) -> Taken | None:
    """The next entry for ``consumer`` by weighted fair share, claimed to it; None if there is
    none it may take now."""
    weights = json.dumps(settings.tenant_weights)
    found = await redis.eval(
        _TAKE,
        1,
        settings.stream,
        settings.consumer_group,
        consumer,
        prefix(settings),
        settings.tenant_max_inflight,
        weights,
        PARKED,
    )
    first, second = cast(list[Any], found)
    if not first:
        return None
    flat = list(second)
    return Taken(first, dict(zip(flat[::2], flat[1::2], strict=True)))


async def reclaim(redis: Redis, settings: Settings, consumer: str) -> Taken | None:
    """One message another worker left unacknowledged for ``claim_idle_ms`` (it is gone: a live
    worker keeps its messages fresh), claimed to ``consumer``; None if there is none. Looks
    consumer by consumer, past the parked entries, which are idle by design."""
    stream, group = settings.stream, settings.consumer_group
    try:
        consumers = await redis.xinfo_consumers(stream, group)
    except ResponseError:  # no stream or group yet: nothing to reclaim
        return None
    for holder in consumers:
        name = holder["name"].decode() if isinstance(holder["name"], bytes) else str(holder["name"])
        if name in (PARKED, consumer) or not int(holder["pending"]):
            continue
        stale = await redis.xpending_range(
            stream, group, min="-", max="+", count=1, consumername=name, idle=settings.claim_idle_ms
        )
        if not stale:
            continue
        claimed: Any = await redis.xclaim(
            stream, group, consumer, settings.claim_idle_ms, [stale[0]["message_id"]]
        )
        if claimed and claimed[0][1] is not None:
            return Taken(claimed[0][0], dict(claimed[0][1]))
    return None


def done(pipe: Pipeline, settings: Settings, entry_ids: Sequence[bytes | str | int]) -> None:
    """Queue on ``pipe``: these entries were acknowledged (or handed back), their tenant has them
    in flight no more."""
    if entry_ids:
        pipe.eval(_DONE, 0, prefix(settings), *entry_ids)


def entry_fields(tenant: str, priority: str, cost: int) -> Mapping[str, str | int]:
    """What a stream entry says for the scheduler, beside the message."""
    return {"tenant": tenant, "priority": priority, "cost": max(1, cost)}


async def in_flight(redis: Redis, settings: Settings, tenant: str) -> int:
    """How many of the tenant's jobs workers hold now."""
    return int(await redis.scard(f"{prefix(settings)}running:{tenant}"))


@dataclass(frozen=True)
class Waiting:
    """A tenant's jobs waiting in its lanes."""

    tenant: str
    jobs: int
    cost: int
    since_ms: int  # when its oldest waiting entry was queued: epoch ms, from the entry's id


async def waiting(redis: Redis, settings: Settings) -> list[Waiting]:
    """Every tenant with jobs waiting, after parking what is new (so nothing waiting is left out:
    with every worker busy, nobody else parks). Reads a few keys per waiting tenant, never the
    lanes' entries."""
    while True:
        try:
            found = cast(
                list[Any],
                await redis.eval(
                    _WAITING,
                    1,
                    settings.stream,
                    settings.consumer_group,
                    "",
                    prefix(settings),
                    0,
                    "{}",
                    PARKED,
                ),
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # no job submitted yet
                return []
            raise
        if int(found[0]) < 1000:  # parked all that was new
            break
    return [
        Waiting(_text(t), int(jobs), int(cost), int(_text(oldest).split("-")[0]))
        for t, jobs, cost, oldest in found[1:]
    ]


async def busiest(redis: Redis, settings: Settings, count: int) -> list[str]:
    """The ``count`` tenants that brought the most work (cost) so far, the most first."""
    found = cast(list[bytes], await redis.zrevrange(f"{prefix(settings)}work", 0, count - 1))
    return [t.decode() for t in found]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
