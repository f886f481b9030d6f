"""The dataset's index files without a render: seeded splits and the card's libraries."""

from __future__ import annotations

import pytest

from farm.io.splits import SplitOptions, parse_val, split_videos


def test_splits_are_seeded_stable_and_sized():
    videos = [f"a{i:05d}" for i in range(2000)]
    a = split_videos(videos, 0.1, seed=7)
    assert 150 < len(a["val"]) < 250  # a fraction: each video's own draw
    assert set(a["val"]) | set(a["train"]) == set(videos) and not set(a["val"]) & set(a["train"])
    assert split_videos(list(reversed(videos)), 0.1, seed=7) == a  # order does not matter
    assert split_videos(videos, 0.1, seed=8)["val"] != a["val"]
    # growing the segment never moves an earlier video to the other split
    grown = split_videos(videos + [f"a{i:05d}" for i in range(2000, 4000)], 0.1, seed=7)
    assert set(a["val"]) <= set(grown["val"]) and set(a["train"]) <= set(grown["train"])
    # a count: exactly that many
    assert len(split_videos(videos, 20, seed=7)["val"]) == 20
    assert len(split_videos(videos[:5], 20, seed=7)["val"]) == 5
    assert parse_val("0.25") == 0.25 and parse_val("12") == 12
    for bad in ("-1", "1.5", "half"):
        with pytest.raises(ValueError, match="--val"):
            parse_val(bad)


def test_the_cards_libraries_carry_the_licences_their_manifests_declare():
    from farm.view.card import libraries

    objects = [{"library": "khronos", "license": "CC-BY-4.0", "model": "duck"},
               {"library": "khronos", "license": "CC0-1.0", "model": "box"},
               {"library": "robots", "model": "arm"}, {"model": "02691156/model003"}]
    assert libraries({"a00000": {"objects": objects[:2]}, "a00001": {"objects": objects[2:]}}) == [
        {"name": "khronos", "objects": 2, "licence": "CC-BY-4.0, CC0-1.0"},
        {"name": "robots", "objects": 1, "licence": "unknown"},
        {"name": "shapenet-layout", "objects": 1,
         "licence": "not declared (ShapeNet-layout models root)"}]


def test_split_options_default():
    assert SplitOptions().val == 0.1 and SplitOptions().year == "2017"
