"""Farm bookkeeping in Redis, shared by workers and the scheduler (no Blender, no Celery).

Keys (all under ``farm:``):
- ``segments``: set of segment numbers ever enqueued;
- ``seg:<S>:state``: hash video -> queued | running | retrying | done | failed | cancelled;
- ``seg:<S>:specs``: hash video -> zlib-compressed spec JSON (for retry and finalize);
- ``presets``: hash preset id -> zlib-compressed preset JSON, as the scheduler resolved it;
- ``video:<id>``: hash with generation (bumped per enqueue), preset (its id), lost_deliveries,
  crashes, uploads (completed uploads of the current generation), last_error, worker, device,
  timings;
- ``completions``: sorted set video -> finish time (rates over a window);
- ``seg:<S>:stranded``: hash video -> when it was first found pending with no message and no
  lease (``scheduler status`` flags, the reconciler re-sends);
- ``lease:video:<id>``, ``lease:gpu:<node>:<index>``: lease tokens with a TTL;
- ``worker:<node>:failures``: hash video -> a failure counted against the worker (reset by a
  delivered video); ``workers:unhealthy``: hash node -> why it stopped consuming.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

UNHEALTHY = "farm:workers:unhealthy"  # node -> JSON {reason, since}
STATES = ("queued", "running", "retrying", "done", "failed", "cancelled")
PREFIX = "farm:"

# Renew or release a lease only when we still hold it.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
         "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
           "return redis.call('del', KEYS[1]) else return 0 end"


# Cancel a video of the segment unless it is done. KEYS: segment state hash; ARGV: video.
# Returns the state it had ("" for a video the segment does not hold: nothing changed).
_CANCEL = """
local was = redis.call('hget', KEYS[1], ARGV[1])
if not was then return '' end
if was ~= 'done' then redis.call('hset', KEYS[1], ARGV[1], 'cancelled') end
return was
"""

# Change a video's state and fields only while the given lease token holds its lease (a worker
# that lost the lease, frozen or partitioned, must not overwrite the new holder's state), while
# the delivery's generation is the video's current one (a re-enqueue supersedes it) and never over
# ``cancelled`` (terminal for the generation it cancelled). KEYS: lease, segment state hash, video
# hash, completions; ARGV: token ("": no lease check), video, state ("" keeps it), now, generation
# ("": any), then "set"/"del" followed by field (and value for "set") entries. Returns "ok", or
# why nothing was changed: "lease", "superseded", "cancelled".
_UPDATE_IF_CURRENT = """
if ARGV[1] ~= '' and redis.call('get', KEYS[1]) ~= ARGV[1] then return 'lease' end
if ARGV[5] ~= '' and redis.call('hget', KEYS[3], 'generation') ~= ARGV[5] then
  return 'superseded'
end
if redis.call('hget', KEYS[2], ARGV[2]) == 'cancelled' then return 'cancelled' end
if ARGV[3] ~= '' then redis.call('hset', KEYS[2], ARGV[2], ARGV[3]) end
if ARGV[3] == 'done' then redis.call('zadd', KEYS[4], ARGV[4], ARGV[2]) end
local i = 6
while i <= #ARGV do
  if ARGV[i] == 'set' then redis.call('hset', KEYS[3], ARGV[i + 1], ARGV[i + 2]); i = i + 3
  else redis.call('hdel', KEYS[3], ARGV[i + 1]); i = i + 2 end
end
return 'ok'
"""

# One enqueue of a batch, atomically per video: bump the generation and write the spec (and the
# preset it was resolved with) of that generation, so two schedulers enqueueing the same video at
# once never leave one's spec under the other's generation. KEYS: segments, started, state hash,
# specs hash, presets hash; ARGV: segment, state, now, then per video: id, packed spec, preset id,
# packed preset. Returns the generations in order.
_REGISTER = """
redis.call('sadd', KEYS[1], ARGV[1])
redis.call('setnx', KEYS[2], ARGV[3])
local out = {}
local i = 4
while i <= #ARGV do
  local video, key = ARGV[i], 'farm:video:' .. ARGV[i]  -- PREFIX
  local generation = redis.call('hincrby', key, 'generation', 1)
  redis.call('hset', KEYS[3], video, ARGV[2])
  redis.call('hset', KEYS[4], video, ARGV[i + 1])
  if ARGV[i + 2] ~= '' then redis.call('hset', KEYS[5], ARGV[i + 2], ARGV[i + 3]) end
  redis.call('hset', key, 'segment', ARGV[1], 'queued_at', ARGV[3], 'preset', ARGV[i + 2])
  redis.call('hdel', key, 'last_error', 'uploads')  -- uploads count per generation
  out[#out + 1] = generation
  i = i + 4
end
return out
"""


class BrokerUnavailable(RuntimeError):
    """Redis cannot be reached."""


def connect(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                  socket_timeout=30, health_check_interval=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        safe = url.split("@")[-1]
        raise BrokerUnavailable(f"cannot reach Redis at {safe}: {exc}") from None
    return client


def pack_spec(spec_json: str) -> str:
    return zlib.compress(spec_json.encode(), 1).hex()


def unpack_spec(blob: str) -> dict:
    return json.loads(zlib.decompress(bytes.fromhex(blob)))


@dataclass
class FarmState:
    r: redis.Redis

    # --- per-video state ---------------------------------------------------------------------
    def register(self, segment: int, specs: list, state: str = "queued",
                 presets: dict[str, dict] | None = None) -> dict[str, int]:
        """Record VideoSpecs as ``state`` with their spec and clear their last error; with
        ``presets`` (video -> the preset resolved into data) also the preset each was sent with,
        which re-sends use instead of reading ``configs/`` again.

        Each registration starts a new *generation* of the video, returned per video: its task
        id includes it, so a cancelled (revoked) generation never shadows a later enqueue, and
        workers drop messages of superseded generations. Bump and spec are one atomic step.
        """
        args: list = [segment, state, time.time()]
        for spec in specs:
            preset = (presets or {}).get(spec.id)
            blob = json.dumps(preset, sort_keys=True) if preset else ""
            preset_id = hashlib.sha256(blob.encode()).hexdigest()[:16] if blob else ""
            args += [spec.id, pack_spec(spec.to_json()), preset_id,
                     pack_spec(blob) if blob else ""]
        keys = [f"{PREFIX}segments", f"{PREFIX}seg:{segment}:started",
                f"{PREFIX}seg:{segment}:state", f"{PREFIX}seg:{segment}:specs",
                f"{PREFIX}presets"]
        out = self.r.eval(_REGISTER, len(keys), *keys, *args) if specs else []
        return dict(zip((s.id for s in specs), map(int, out), strict=True))

    def preset(self, video: str) -> dict | None:
        """The preset (resolved into data) the video's current generation was enqueued with."""
        preset_id = self.r.hget(f"{PREFIX}video:{video}", "preset")
        blob = self.r.hget(f"{PREFIX}presets", preset_id) if preset_id else None
        return json.loads(zlib.decompress(bytes.fromhex(blob))) if blob else None

    def server_time(self) -> float:
        """Redis's clock (Unix seconds): the one clock every worker and scheduler share."""
        seconds, micros = self.r.time()
        return seconds + micros / 1e6

    def eta(self, countdown: float) -> datetime:
        """An ETA ``countdown`` seconds from now by Redis's clock, not this host's (a worker
        whose clock is off would otherwise hold a message too long, or the reconciler see its
        ETA as past and call it stranded)."""
        return datetime.fromtimestamp(self.server_time() + countdown, UTC)

    def generation(self, video: str) -> int:
        return int(self.r.hget(f"{PREFIX}video:{video}", "generation") or 0)

    def cancel(self, segment: int, video: str) -> str:
        """Mark the video cancelled unless it is done, in one step (a video that finished a
        moment ago keeps its state, so finalize --prune never removes a delivered video).
        Returns the state it had; "" for a video the segment does not hold (left alone)."""
        return str(self.r.eval(_CANCEL, 1, f"{PREFIX}seg:{segment}:state", video))

    def set_state(self, segment: int, video: str, state: str, **fields) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(f"{PREFIX}seg:{segment}:state", video, state)
        if fields:
            pipe.hset(f"{PREFIX}video:{video}", mapping={k: str(v) for k, v in fields.items()})
        if state == "done":
            pipe.zadd(f"{PREFIX}completions", {video: time.time()})
        pipe.execute()

    def update_if_current(self, lease_key: str, token: str, segment: int, video: str,
                          state: str | None = None, clear: tuple[str, ...] = (),
                          generation: int | None = None, **fields) -> str:
        """Set ``state`` and ``fields`` and delete ``clear`` fields of a video, atomically and
        only while ``token`` holds ``lease_key`` (``token`` "": no lease), ``generation`` (None:
        any) is the video's current one and the video is not cancelled. Returns "ok", or why
        nothing changed: "lease", "superseded" or "cancelled"."""
        args: list = [token, video, state or "", time.time(),
                      "" if generation is None else str(generation)]
        for name, value in fields.items():
            args += ["set", name, str(value)]
        for name in clear:
            args += ["del", name]
        keys = [f"{PREFIX}lease:{lease_key}", f"{PREFIX}seg:{segment}:state",
                f"{PREFIX}video:{video}", f"{PREFIX}completions"]
        return str(self.r.eval(_UPDATE_IF_CURRENT, len(keys), *keys, *args))

    def stranded_since(self, segment: int, stranded: set[str]) -> dict[str, float]:
        """When each of ``stranded`` (the segment's videos found with no message and no lease
        now) was first found so; videos no longer stranded are forgotten."""
        key = f"{PREFIX}seg:{segment}:stranded"
        known = self.r.hgetall(key)
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        gone = set(known) - stranded
        if gone:
            pipe.hdel(key, *gone)
        for video in stranded - set(known):
            pipe.hsetnx(key, video, now)
        pipe.execute()
        return {video: float(known.get(video, now)) for video in stranded}

    def state(self, segment: int, video: str) -> str | None:
        return self.r.hget(f"{PREFIX}seg:{segment}:state", video)

    def states(self, segment: int) -> dict[str, str]:
        return self.r.hgetall(f"{PREFIX}seg:{segment}:state")

    def incr(self, video: str, name: str) -> int:
        return int(self.r.hincrby(f"{PREFIX}video:{video}", name, 1))

    def clear(self, video: str, *fields: str) -> None:
        self.r.hdel(f"{PREFIX}video:{video}", *fields)

    def video(self, video: str) -> dict[str, str]:
        return self.r.hgetall(f"{PREFIX}video:{video}")

    def spec(self, segment: int, video: str) -> dict | None:
        blob = self.r.hget(f"{PREFIX}seg:{segment}:specs", video)
        return unpack_spec(blob) if blob else None

    def unhealthy_workers(self) -> dict[str, dict]:
        """node -> {reason, since} of every worker that stopped itself after failing video after
        video (worker/blackhole.py) and was not restarted since."""
        return {node: json.loads(raw) for node, raw in self.r.hgetall(UNHEALTHY).items()}

    def segments(self) -> list[int]:
        return sorted(int(s) for s in self.r.smembers(f"{PREFIX}segments"))

    # --- reporting -----------------------------------------------------------------------------
    def counts(self, segment: int) -> Counter:
        return Counter(self.r.hvals(f"{PREFIX}seg:{segment}:state"))

    def videos_in(self, segment: int, state: str) -> list[str]:
        return sorted(v for v, s in self.states(segment).items() if s == state)

    def started(self, segment: int) -> float | None:
        value = self.r.get(f"{PREFIX}seg:{segment}:started")
        return float(value) if value else None

    def recent(self, window_s: float, segment: int | None = None) -> tuple[int, int]:
        """(videos, frames) finished in the last ``window_s`` seconds."""
        now = time.time()
        videos = self.r.zrangebyscore(f"{PREFIX}completions", now - window_s, now)
        pipe = self.r.pipeline(transaction=False)
        for v in videos:
            pipe.hmget(f"{PREFIX}video:{v}", "frames", "segment")
        frames = n = 0
        for f, seg in pipe.execute():
            if segment is None or (seg is not None and int(seg) == segment):
                n += 1
                frames += int(f or 0)
        return n, frames

    # --- leases ------------------------------------------------------------------------------
    def acquire(self, key: str, token: str, ttl_s: float) -> bool:
        return bool(self.r.set(f"{PREFIX}lease:{key}", token, nx=True, px=int(ttl_s * 1000)))

    def renew(self, key: str, token: str, ttl_s: float) -> bool:
        return bool(self.r.eval(_RENEW, 1, f"{PREFIX}lease:{key}", token, int(ttl_s * 1000)))

    def release(self, key: str, token: str) -> None:
        self.r.eval(_RELEASE, 1, f"{PREFIX}lease:{key}", token)

    def holder(self, key: str) -> str | None:
        return self.r.get(f"{PREFIX}lease:{key}")


@dataclass
class Lease:
    """A Redis lease kept alive by a heartbeat thread.

    ``lost`` turns true when renewal fails, or when no renewal succeeded for a whole TTL by the
    monotonic clock: a process frozen (SIGSTOP, a stalled Redis link) past its TTL knows it on
    its first look after resuming, before its heartbeat thread even runs.
    """

    state: FarmState
    key: str
    token: str
    ttl_s: float
    _lost: bool = False
    _renewed: float = 0.0  # monotonic time of the last successful acquire or renewal
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        return self._lost or time.monotonic() - self._renewed >= self.ttl_s

    def acquire(self) -> bool:
        started = time.monotonic()
        if not self.state.acquire(self.key, self.token, self.ttl_s):
            return False
        self._renewed = started
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-{self.key}")
        self._thread.start()
        return True

    def held(self) -> bool:
        """Whether Redis still names us the holder (authoritative, one round trip)."""
        try:
            return not self.lost and self.state.holder(self.key) == self.token
        except redis.RedisError:
            return False

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            if self.lost:  # too late: another worker may hold it now; never take it back
                self._lost = True
                return
            started = time.monotonic()
            try:
                # gone (e.g. Redis restarted without it) while still ours by the clock: take it
                # back if nobody else did
                if not self.state.renew(self.key, self.token, self.ttl_s) and \
                        not self.state.acquire(self.key, self.token, self.ttl_s):
                    self._lost = True
                    return
                self._renewed = started
            except redis.RedisError:
                pass  # Redis briefly away: keep trying until the TTL has passed

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            self.state.release(self.key, self.token)
