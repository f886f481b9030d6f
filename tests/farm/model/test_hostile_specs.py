"""Hostile input: only validation errors come out of the parser and the enqueue path."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.generate.sampling import generate_spec
from farm.model.presets import load_preset
from farm.model.spec import SpecError
from farm.model.validate import parse_spec_text, spec_from_dict
from scheduler.cli import load_spec_files

LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["../../etc/passwd", "/etc/passwd", "~/x", "a\\b", "\x00", "" * 3,
                     "texture/../../x.jpg", "s" * 600, 1e308, -1e308, math.nan]),
    st.lists(st.integers(), max_size=4), st.dictionaries(st.text(max_size=5), st.integers(),
                                                         max_size=3),
)


@pytest.fixture(scope="module")
def valid(library):
    return generate_spec(library, load_preset("tiny"), 0, 3, 2021).to_dict()


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _mutate(doc: dict, data) -> dict:
    doc = copy.deepcopy(doc)
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = data.draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = data.draw(LEAVES)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[data.draw(st.text(min_size=1, max_size=8))] = data.draw(LEAVES)
            else:
                parent.append(data.draw(LEAVES))
        except (KeyError, IndexError, TypeError, AttributeError):  # an earlier mutation's None
            continue
    return doc


def _only_validation_errors(fn, *args):
    try:
        spec = fn(*args)
    except SpecError as exc:
        assert exc.field and exc.problem
        return None
    return spec


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_specs_give_only_validation_errors(valid, data):
    doc = _mutate(valid, data)
    spec = _only_validation_errors(spec_from_dict, doc)
    if spec is not None:  # whatever passes validation is sane and round-trips
        assert parse_spec_text(spec.to_yaml()) == spec
        assert all(math.isfinite(v) for o in spec.objects for row in o.location_poly for v in row)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=2048))
def test_random_bytes_give_only_validation_errors(blob):
    spec = _only_validation_errors(parse_spec_text, blob)
    if spec is not None:  # bytes that happen to parse must be a sane spec that round-trips
        assert parse_spec_text(spec.to_yaml()) == spec


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_enqueue_path_gives_only_validation_errors(valid, data, tmp_path_factory):
    import yaml

    folder = tmp_path_factory.mktemp("hostile")
    path = folder / "spec.yaml"
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(st.binary(max_size=512)))
    else:
        path.write_text(yaml.safe_dump(_mutate(valid, data)))
    try:
        specs = load_spec_files([str(folder)])
    except SpecError as exc:
        assert str(path) in str(exc)
    else:  # what the enqueue path accepts is one valid spec, equal to itself after a round trip
        assert len(specs) == 1 and parse_spec_text(specs[0].to_yaml()) == specs[0]


def test_yaml_alias_bomb_and_deep_nesting_are_rejected():
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b]\n"
    with pytest.raises(SpecError, match="aliases are not allowed"):
        parse_spec_text(bomb)
    with pytest.raises(SpecError):
        parse_spec_text("[" * 100_000)


@pytest.mark.parametrize("bad", ["../models/x", "/etc/passwd", "a/../../b", "~root/x", "a\\b"])
def test_asset_paths_cannot_escape_their_roots(valid, bad):
    doc = copy.deepcopy(valid)
    doc["background"]["image"] = bad
    with pytest.raises(SpecError, match="background.image"):
        spec_from_dict(doc)


@pytest.mark.parametrize(("field", "value"), [("frames", 100_000), ("resolution", [100_000, 10]),
                                               ("objects", "many")])
def test_absurd_sizes_are_rejected(valid, field, value):
    doc = copy.deepcopy(valid)
    doc[field] = value
    with pytest.raises(SpecError, match=field):
        spec_from_dict(doc)


def test_celery_accepts_json_only():
    from farm.queue.app import app

    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert app.conf.result_accept_content == ["json"]
