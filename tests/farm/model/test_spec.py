"""Spec document: validation, YAML round trip, hashing."""

from __future__ import annotations

import copy
import math

import pytest

from farm.generate.sampling import generate_spec
from farm.model.spec import SpecError
from farm.model.validate import parse_spec_text, spec_from_dict


@pytest.fixture(scope="module")
def spec_dict(library, bl30k):
    return generate_spec(library, bl30k, 1, 7, 2021).to_dict()


def test_yaml_round_trip_is_exact(library, bl30k):
    spec = generate_spec(library, bl30k, 1, 7, 2021)
    again = parse_spec_text(spec.to_yaml())
    assert again == spec
    assert again.digest() == spec.digest()
    assert again.to_yaml() == spec.to_yaml()


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda d: d.pop("camera"), "spec", "missing field(s) camera"),
        (lambda d: d.update(colour=1), "spec", "unknown field(s) colour"),
        (lambda d: d.update(frames=0), "frames", "outside"),
        (lambda d: d.update(frames="160"), "frames", "expected an integer"),
        (lambda d: d.update(resolution=[768]), "resolution", "[width, height]"),
        (lambda d: d["camera"].update(fov=math.nan), "camera.fov", "finite"),
        (lambda d: d["objects"][1]["location_poly"][2].__setitem__(0, math.inf),
         "objects[1].location_poly[2][0]", "finite"),
        (lambda d: d["objects"][0].update(model="../../etc/passwd"), "objects[0].model", ".."),
        (lambda d: d["objects"][0].update(texture="/abs/x.jpg"), "objects[0].texture", "relative"),
        (lambda d: d["background"].update(image=""), "background.image", "non-empty"),
        (lambda d: d["render"].update(samples=10**6), "render.samples", "outside"),
        (lambda d: d["render"].update(denoise_prefilter="BEST"), "render.denoise_prefilter",
         "not one of"),
        (lambda d: d["render"].update(denoise_quality="ULTRA"), "render.denoise_quality",
         "not one of"),
        (lambda d: d.update(objects=[]), "objects", "1..16"),
        (lambda d: d["lights"][0].update(color=[1, 1]), "lights[0].color", "list of 3"),
        (lambda d: d.update(version=99), "version", "unsupported"),
        (lambda d: d["objects"][0].update(normalize="yes"), "objects[0].normalize",
         "true or false"),
        (lambda d: d["objects"][0].update(up_axis="X"), "objects[0].up_axis", "not one of Y, Z"),
    ],
)
def test_validation_names_field_and_problem(spec_dict, mutate, field, problem):
    data = copy.deepcopy(spec_dict)
    mutate(data)
    with pytest.raises(SpecError) as err:
        spec_from_dict(data)
    assert err.value.field == field
    assert problem in err.value.problem


def test_malformed_yaml_is_a_spec_error():
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_spec_text("id: [unclosed")
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_spec_text("- just\n- a list\n")


def test_yaml_is_loaded_safely():
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_spec_text("!!python/object/apply:os.system ['echo owned']")


def test_specs_without_normalisation_fields_render_files_as_they_are(spec_dict):
    """Spec files written before objects carried normalize / up_axis stay valid and mean what
    they meant: the mesh as it is in its file, Y-up."""
    data = copy.deepcopy(spec_dict)
    for obj in data["objects"]:
        del obj["normalize"], obj["up_axis"]
    for obj in spec_from_dict(data).objects:
        assert obj.normalize is False and obj.up_axis == "Y"


def test_fast_yaml_writer_is_safe_dump_byte_for_byte(library, bl30k, tiny):
    """Spec files come from libyaml's emitter fed with events (farm.model.spec.dump_yaml): the same
    text as yaml.safe_dump, for generated specs and for awkward values."""
    import yaml

    from farm.model.spec_yaml import dump_yaml, load_yaml

    assert yaml.__with_libyaml__  # the C loader and emitter are what the speed path uses
    for preset in (bl30k, tiny):
        for index in range(40):
            data = generate_spec(library, preset, 3, index, 2021).to_dict()
            assert dump_yaml(data) == yaml.safe_dump(data, sort_keys=False, width=100)
    odd = {"empty": "", "int-like": "123", "bool-like": "yes", "null-like": "~", "float": 1e-5,
           "neg-zero": -0.0, "big": 1e16, "huge-int": 2**70, "colon": "a: b", "hash": "#x",
           "lead": " x", "doc": "---x", "unicode": "é \U0001F600", "ctrl": "a\x85\u2028\tb",
           "long": "word " * 60, "nested": [[], {}, [{"k": [1.5, None, True]}]],
           "quote": "'\"", "sexagesimal": "1:20", "hex": "0x1f"}
    assert dump_yaml(odd) == yaml.safe_dump(odd, sort_keys=False, width=100)
    assert load_yaml(dump_yaml(odd)) == odd
    assert dump_yaml({1: "non-string key"}) == yaml.safe_dump({1: "non-string key"},
                                                              sort_keys=False, width=100)


def test_direct_yaml_writer_is_safe_dump_byte_for_byte(library, bl30k, tiny):
    """VideoSpec.to_yaml writes common specs without libyaml (farm/model/spec_yaml.py's block writer) and
    everything else through dump_yaml: either way the text is yaml.safe_dump's."""
    from dataclasses import replace

    import numpy as np
    import yaml

    def check(spec):
        assert spec.to_yaml() == yaml.safe_dump(spec.to_dict(), sort_keys=False, width=100)

    for preset in (bl30k, tiny):
        for index in range(60):
            check(generate_spec(library, preset, 4, index, 2021))
    spec = generate_spec(library, bl30k, 1, 7, 2021)
    obj = spec.objects[0]
    for synset in ("03001627", "0x1f", "yes", "1_0", "1e3", "a:b", "x y", "", "é", "-x", "a" * 101):
        check(replace(spec, objects=[replace(obj, synset=synset)]))
    for extra in ({"empty": {}, "list": [], "deep": [[[1.5, -0.0, 1e16, 2**70]], {"k": None}]},
                  {"numpy": np.float64(0.1)}, {"nan": float("nan")}, {1: "int key"},
                  {"tuple": (1, 2)}, {"light": spec.lights[0]}, {"ints": np.arange(3)},
                  {"rows": [[1.0, 2e-07, 3.0], [1, 2.0, 3.0], [0.5, -1e+16, 0.25], (0.5, 1.5, 2.5)]},
                  {"inf row": [[0.5, float("inf"), 1.0]]}):
        check(replace(spec, generation={**spec.generation, "extra": extra}))
    check(replace(spec, render=replace(spec.render, outputs=("rgb", "masks", "depth"))))


def test_fast_yaml_loader_still_refuses_aliases(spec_dict):
    """The libyaml loader keeps the alias refusal (a '*' sends the text through an event scan)
    and still reads specs whose strings hold a '*'."""
    import yaml

    from farm.model.spec_yaml import dump_yaml

    doc = copy.deepcopy(spec_dict)
    doc["objects"][0]["category"] = "star *x and &y"
    assert parse_spec_text(dump_yaml(doc)).objects[0].category == "star *x and &y"
    assert parse_spec_text(dump_yaml(doc).encode()).objects[0].category == "star *x and &y"
    with_alias = dump_yaml(spec_dict).replace("source: generated", "source: &s generated\nx: *s")
    for text in (with_alias, with_alias.encode(), "a: &a [1]\nb: *a\n", "- &x 1\n- *x\n"):
        with pytest.raises(SpecError, match="aliases are not allowed"):
            parse_spec_text(text)
    anchored = yaml.safe_dump(spec_dict, sort_keys=False).replace("source: generated",
                                                                   "source: &s generated")
    assert parse_spec_text(anchored).source == "generated"  # an anchor alone is harmless
