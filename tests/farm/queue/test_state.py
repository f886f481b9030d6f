"""Redis bookkeeping (``farm.queue.state``) on a real redis-server."""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.services


def _register_at_once(states, segment: int, batches: list[list]) -> list[dict[str, int]]:
    """Each FarmState (its own connection: a scheduler) registers its batch at the same time."""
    got: list[dict[str, int]] = [{} for _ in batches]
    start = threading.Barrier(len(batches))

    def enqueue(i: int) -> None:
        start.wait()
        got[i] = states[i].register(segment, batches[i])

    threads = [threading.Thread(target=enqueue, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_register_is_one_atomic_step_per_video(redis_service, library, tiny):
    """Two schedulers enqueue the same videos at once (with different seeds): for every video,
    the spec Redis holds is the one of the generation that came last, never a superseded one's
    under the current generation (bump and spec written in one step)."""
    from farm.generate.sampling import generate_spec
    from farm.queue.state import FarmState, connect

    port, password = redis_service
    url = f"redis://:{password}@127.0.0.1:{port}/6"
    states = [FarmState(connect(url)) for _ in range(2)]
    states[0].r.flushdb()
    batches = [[generate_spec(library, tiny, 3, i, seed) for i in range(60)]
               for seed in (2021, 999)]
    mixed = 0
    for _ in range(30):
        got = _register_at_once(states, 3, batches)
        for i, spec in enumerate(batches[0]):
            last = max((0, 1), key=lambda s, v=spec.id: got[s][v])
            assert got[last][spec.id] == states[0].generation(spec.id)
            mixed += states[0].spec(3, spec.id)["seed"] != batches[last][i].seed
    assert mixed == 0, f"{mixed} videos hold a superseded generation's spec"


def test_uploads_count_the_current_generation(redis_service, library, tiny):
    """A new generation (re-enqueue, finalize --requeue) starts its upload count afresh, so a
    repaired or re-seeded video is not taken for a duplicate; within one generation it counts."""
    from farm.generate.sampling import generate_spec
    from farm.queue.state import FarmState, connect

    port, password = redis_service
    state = FarmState(connect(f"redis://:{password}@127.0.0.1:{port}/7"))
    state.r.flushdb()
    spec = generate_spec(library, tiny, 3, 0, 2021)
    state.register(3, [spec])
    state.incr(spec.id, "uploads")
    state.incr(spec.id, "uploads")
    assert state.video(spec.id)["uploads"] == "2"
    state.register(3, [spec])
    assert "uploads" not in state.video(spec.id)
    assert state.generation(spec.id) == 2
