"""Who works next: weighted fair sharing of the workers between tenants, measured in job cost.

Design. Every job still has one message on the one stream (``imgflow.core.queue``: published,
recorded, reclaimed and acknowledged as before); the entry also carries its tenant, priority and
cost. Workers no longer read the stream in order. A worker asks ``take``, one Lua script that:

1. parks every entry not yet delivered: reads it into the group as the consumer ``PARKED`` (so it
   stays pending, counted in the backlog, and never lost) and appends ``cost id`` to its tenant's
   lane (``lane:<tenant>:<priority>``), the tenant entering the ready set if it was not there;
2. picks the ready tenant with the least virtual time, takes the head of its ``interactive`` lane
   (else ``batch``) and XCLAIMs that entry to the worker. A tenant at its in-flight cap leaves the
   ready set for ``capped`` until one of its jobs is done, so a take never walks past the tenants
   at their cap: a few commands whatever the number of tenants;
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
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from imgflow.core.settings import Settings

PARKED = "~parked"  # the consumer that holds entries waiting in a lane

# Parking (step 1), shared by _TAKE and _PARK_ONLY. KEYS[1]: the stream; ARGV[1]: group, ARGV[3]:
# key prefix, ARGV[6]: the parked consumer. Beside the lanes it keeps, for the metrics (``waiting``),
# each tenant's jobs and cost waiting and their totals (``queued:jobs``, ``queued:cost``, taken off
# as entries leave a lane), each waiting tenant's oldest entry (``queued:oldest``, tenant -> ms of
# its lanes' older head) and the cost each tenant ever brought (``work``: the ranking of
# imgflow.core.tenant_metrics). Sets ``parked`` to the number of entries parked.
_PARK = """
local stream, group, prefix = KEYS[1], ARGV[1], ARGV[3]
local ready, vtimes, clock = prefix .. 'ready', prefix .. 'vtime', prefix .. 'clock'
local jobs, costs, oldest = prefix .. 'queued:jobs', prefix .. 'queued:cost', prefix .. 'queued:oldest'
local function lane(t, p) return prefix .. 'lane:' .. t .. ':' .. p end
local function running(t) return prefix .. 'running:' .. t end
local function ms(entry) return tonumber(string.match(entry, '(%d+)%-%d+$')) end
local function count(t, n, cost)
  for _, key in ipairs({jobs, costs}) do
    local change = key == jobs and n or cost
    redis.call('HINCRBY', key, '', change)  -- the total, under the empty name
    if redis.call('HINCRBY', key, t, change) <= 0 then redis.call('HDEL', key, t) end
  end
end
local function unqueue(t, cost)  -- after an entry of t left a lane: its counts and oldest entry
  count(t, -1, -cost)
  local first = false
  for _, p in ipairs({'interactive', 'batch'}) do
    local head = redis.call('LINDEX', lane(t, p), 0)
    if head and (not first or ms(head) < first) then first = ms(head) end
  end
  if first then redis.call('ZADD', oldest, first, t) else redis.call('ZREM', oldest, t) end
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
    count(t, 1, cost)
    redis.call('ZADD', oldest, 'NX', ms(entry[1]), t)
    redis.call('ZINCRBY', prefix .. 'work', cost, t)
    if not redis.call('ZSCORE', ready, t) and not redis.call('ZSCORE', prefix .. 'capped', t) then
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
local capped = prefix .. 'capped'
local function lanes(t)
  return redis.call('LLEN', lane(t, 'interactive')) + redis.call('LLEN', lane(t, 'batch'))
end
-- the head of the ready set each time: every turn takes an entry, or takes a tenant out of the set
while true do
  local head = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if #head == 0 then break end
  local t, v = head[1], tonumber(head[2])
  if cap > 0 and redis.call('SCARD', running(t)) >= cap then
    redis.call('ZREM', ready, t)
    redis.call('ZADD', capped, v, t)  -- ready again when one of its jobs is done (_DONE)
  else
    local entry = redis.call('LPOP', lane(t, 'interactive')) or redis.call('LPOP', lane(t, 'batch'))
    if not entry then
      redis.call('ZREM', ready, t)
      redis.call('HSET', vtimes, t, v)
    else
      local space = string.find(entry, ' ')
      local cost, id = tonumber(string.sub(entry, 1, space - 1)) or 1, string.sub(entry, space + 1)
      unqueue(t, cost)
      local claimed = redis.call('XCLAIM', stream, group, me, 0, id)
      local after = v + cost / (tonumber(weights[t]) or 1)
      redis.call('SET', clock, v)
      if lanes(t) == 0 then
        redis.call('ZREM', ready, t)
        redis.call('HSET', vtimes, t, after)
      else
        redis.call('ZADD', ready, after, t)
      end
      if claimed[1] then  -- else the entry was deleted (trimmed, or acknowledged elsewhere): the next
        redis.call('SADD', running(t), id)
        redis.call('HSET', prefix .. 'holder', id, t)
        if cap > 0 and redis.call('SCARD', running(t)) >= cap and redis.call('ZREM', ready, t) == 1 then
          redis.call('ZADD', capped, after, t)
        end
        return {claimed[1][1], claimed[1][2]}
      end
    end
  end
end
return {false, false}
"""
)

# KEYS and ARGV as _TAKE's (ARGV[2], [4], [5] unused). Parks; returns the number parked.
_PARK_ONLY = _PARK + "return parked"

# KEYS: none. ARGV: prefix, in-flight cap per tenant (0: none), then entry ids. A taken entry is no
# longer in its tenant's flight; a tenant that was at its cap is ready again.
_DONE = """
local prefix, cap = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV do
  local t = redis.call('HGET', prefix .. 'holder', ARGV[i])
  if t then
    redis.call('SREM', prefix .. 'running:' .. t, ARGV[i])
    redis.call('HDEL', prefix .. 'holder', ARGV[i])
    local v = redis.call('ZSCORE', prefix .. 'capped', t)
    if v and (cap <= 0 or redis.call('SCARD', prefix .. 'running:' .. t) < cap) then
      redis.call('ZREM', prefix .. 'capped', t)
      redis.call('ZADD', prefix .. 'ready', v, t)
    end
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
        pipe.eval(_DONE, 0, prefix(settings), settings.tenant_max_inflight, *entry_ids)


def entry_fields(tenant: str, priority: str, cost: int) -> Mapping[str, str | int]:
    """What a stream entry says for the scheduler, beside the message."""
    return {"tenant": tenant, "priority": priority, "cost": max(1, cost)}


async def in_flight(redis: Redis, settings: Settings, tenant: str) -> int:
    """How many of the tenant's jobs workers hold now."""
    return int(await redis.scard(f"{prefix(settings)}running:{tenant}"))


@dataclass(frozen=True)
class Waiting:
    """Jobs waiting in lanes: one tenant's, or several tenants' together."""

    jobs: int = 0
    cost: int = 0
    since_ms: int | None = None  # when the oldest was queued: epoch ms, from its entry's id


async def park(redis: Redis, settings: Settings) -> None:
    """Park every entry not yet in a lane (what a take does first), a thousand a call."""
    args = (settings.stream, settings.consumer_group, "", prefix(settings), 0, "{}", PARKED)
    try:
        while int(await redis.eval(_PARK_ONLY, 1, *args)) == 1000:
            pass
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):  # NOGROUP: no job submitted yet
            raise


async def waiting(
    redis: Redis, settings: Settings, tenants: Collection[str]
) -> tuple[dict[str, Waiting], Waiting]:
    """What waits in the lanes of each of ``tenants`` (those with jobs waiting), and of all the
    others together; entries not yet parked are left out (a take parks them, and the API's
    reconciler with no worker taking). A few reads per tenant named, whatever the number of
    tenants or entries waiting: the counts are kept as entries are parked and taken."""
    p = prefix(settings)
    named = ["", *tenants]  # "": the totals
    async with redis.pipeline(transaction=True) as pipe:  # one moment's figures
        pipe.hmget(f"{p}queued:jobs", named)
        pipe.hmget(f"{p}queued:cost", named)
        pipe.zmscore(f"{p}queued:oldest", named)
        pipe.zrange(f"{p}queued:oldest", 0, len(named), withscores=True)  # someone else's among them
        jobs, costs, since, first = await pipe.execute()
    found = {
        t: Waiting(int(n or 0), int(c or 0), None if ms is None else int(ms))
        for t, n, c, ms in zip(named, jobs, costs, since, strict=True)
    }
    total = found.pop("")
    others_since = next((int(ms) for t, ms in first if t.decode() not in found), None)
    others = Waiting(
        max(0, total.jobs - sum(w.jobs for w in found.values())),
        max(0, total.cost - sum(w.cost for w in found.values())),
        others_since,
    )
    return {t: w for t, w in found.items() if w.jobs > 0}, others


async def busiest(redis: Redis, settings: Settings, count: int) -> list[str]:
    """The ``count`` tenants that brought the most work (cost) so far, the most first."""
    found = cast(list[bytes], await redis.zrevrange(f"{prefix(settings)}work", 0, count - 1))
    return [t.decode() for t in found]
