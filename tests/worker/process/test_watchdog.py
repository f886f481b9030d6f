"""The render processes' default memory cap: derived from the memory the worker may use."""

from __future__ import annotations

import pytest

from farm.settings import ConfigError, load_settings
from worker.process import watchdog


@pytest.mark.parametrize(("content", "limit"), [
    ("max\n", None),  # cgroup v2, no limit
    ("6442450944\n", 6 * 2**30),  # a container's limit (compose's FARM_WORKER_MEMORY)
    ("9223372036854771712\n", None),  # cgroup v1 says "unlimited" with a huge number
])
def test_cgroup_limit(tmp_path, content, limit):
    path = tmp_path / "memory.max"
    path.write_text(content)
    assert watchdog.cgroup_limit_bytes((str(path),)) == limit
    assert watchdog.cgroup_limit_bytes((str(tmp_path / "absent"), str(path))) == limit


def test_auto_cap_shares_the_worker_memory_among_its_renders():
    gib = 2**30
    # In a 6 GiB container with 2 renders at once: 80 % of 3 GiB each.
    assert watchdog.auto_max_rss_mb(6 * gib, 64 * gib, 8, 2) == round(0.8 * 3 * 1024)
    # No container limit: the host's memory shared by one worker per GPU.
    assert watchdog.auto_max_rss_mb(None, 64 * gib, 8, 1) == round(0.8 * 8 * 1024)
    assert watchdog.auto_max_rss_mb(None, 16 * gib, 0, 1) == round(0.8 * 16 * 1024)  # CPU host


def test_the_setting():
    limit, host, gpus = watchdog._memory_facts()
    auto = load_settings({"FARM_RENDERS_PER_GPU": "2"})
    assert watchdog.max_rss_mb(auto) == watchdog.auto_max_rss_mb(limit, host, gpus, 2) > 0
    assert watchdog.max_rss_mb(load_settings({"FARM_RENDER_MAX_RSS_MB": "off"})) is None
    assert watchdog.max_rss_mb(load_settings({"FARM_RENDER_MAX_RSS_MB": "2048"})) == 2048
    with pytest.raises(ConfigError, match="FARM_RENDER_MAX_RSS_MB='lots' is not a number"):
        load_settings({"FARM_RENDER_MAX_RSS_MB": "lots"})
