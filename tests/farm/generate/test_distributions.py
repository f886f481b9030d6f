"""The generator against the original BL30K generator's measured distributions.

Reference figures: 1000 configs written by the original ``generate_yaml.py`` (see
``farm.generate.distributions.ORIGINAL`` for every figure's exact definition). Tolerances are stated per
figure in ``farm.generate.distributions.CHECKS`` (6 % of the original's 5-95 % spread for motion quantiles).
"""

from __future__ import annotations

import pytest

from farm.generate.distributions import CHECKS, ORIGINAL, compare, figures
from farm.generate.sampling import _step_towards, generate_spec
from farm.model.presets import load_preset


@pytest.fixture(scope="module")
def measured(library):
    def run(preset: str) -> dict:
        p = load_preset(preset)
        return figures(generate_spec(library, p, 1, i, 2021) for i in range(1000))
    return run


def test_bl30k_matches_the_original_generator(measured):
    ours = measured("bl30k")
    rows = {name: verdict for name, _, _, verdict in compare(ours)}
    off = {name: v for name, v in rows.items() if name in CHECKS and v != "ok"}
    assert not off, off
    assert set(CHECKS) <= set(rows)
    # De-intersection stays: no pair closer than 0.75 (the original: 11.7 %).
    assert ours["min_pair_distance_below_0_75"] <= 0.005
    assert ORIGINAL["min_pair_distance_below_0_75"] > 0.1


def test_symmetric_clamp_is_the_slower_named_option(measured):
    ours = measured("bl30k-symmetric")
    verdicts = {name: verdict for name, _, _, verdict in compare(ours)}
    assert verdicts["speed_per_frame_q"].startswith("OFF")
    median = ours["speed_per_frame_q"][2]
    assert median < 0.7 * ORIGINAL["speed_per_frame_q"][2]  # ~37 % slower than BL30K
    assert verdicts["rot_speed_per_frame_q"] == "ok"  # rotation has no clamp


def test_one_sided_clamp_is_the_originals():
    # gen_utils.get_next_vector_in_*: `if d > max: d = sign(d) * max`, negative moves unclamped.
    current, target, limit = [0.0, 0.0, 0.0], [5.0, -5.0, 0.2], [1.0, -1.0, 1.0]
    assert _step_towards(current, target, limit, one_sided=True) == [1.0, -5.0, 0.2]
    assert _step_towards(current, target, limit, one_sided=False) == [1.0, -1.0, 0.2]


def test_symmetric_preset_is_bl30k_but_for_the_clamp():
    base, sym = load_preset("bl30k"), load_preset("bl30k-symmetric")
    assert (base.step_clamp, sym.step_clamp) == ("one-sided", "symmetric")
    assert (sym.name, sym.render, sym.frames, sym.quality_gate) == (
        "bl30k-symmetric", base.render, base.frames, base.quality_gate)


def test_spec_records_its_step_clamp(library):
    spec = generate_spec(library, load_preset("bl30k-symmetric"), 0, 3, 1)
    assert spec.generation["step_clamp"] == "symmetric"


def test_stats_cli_exits_non_zero_when_a_figure_is_off(pack):
    import subprocess
    import sys

    common = [sys.executable, "-m", "farm", "stats", "--count", "1000", "--models",
              str(pack.models), "--textures", str(pack.textures)]
    ok = subprocess.run(common, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "speed_per_frame_q" in ok.stdout and "OFF" not in ok.stdout
    off = subprocess.run([*common, "--preset", "bl30k-symmetric"], capture_output=True, text=True)
    assert off.returncode == 1 and "OFF" in off.stdout
