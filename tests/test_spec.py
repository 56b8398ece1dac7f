"""Sweep specs (sims/sweep/spec.py): the examples, canonical dictionaries, grid expansion, memory
estimates, and one-line errors naming the file, the key and the bad value."""

from __future__ import annotations

import dataclasses
import inspect
import json
import pickle
from fractions import Fraction
from pathlib import Path

import pytest

from loraplus_lab.sims.params import preset
from loraplus_lab.sims.sweep.spec import (
    DEFAULTS,
    DTYPES,
    OPTIMIZERS,
    PROBLEM_OPTIONS,
    SpecError,
    SweepSpec,
    load_spec,
    parse_spec,
)

SPECS = Path(__file__).resolve().parent.parent / "specs"

BASE = """
steps = 2
seeds = 2
widths = [64, 128]

[[parametrizations]]
preset = "lora"
eta = 0.01
"""


def _spec(text: str, path: str = "<spec>") -> SweepSpec:
    return parse_spec(text, path)


# ----------------------------------------------------------------------------- the examples
def test_example_specs_parse() -> None:
    files = sorted(SPECS.glob("*.toml"))
    assert {f.stem for f in files} >= {"small", "default", "adam_grid"}
    for f in files:
        spec = load_spec(f)
        assert spec.name == f.stem and spec.path == str(f)
        assert spec.source == f.read_text()
        assert max(spec.job_memory_mb(w) for w in spec.widths) <= spec.memory_limit_mb
        json.dumps(spec.to_dict(), allow_nan=False)


def test_small_spec_is_small_and_splits_into_jobs() -> None:
    spec = load_spec(SPECS / "small.toml")
    assert spec.problem == "paper" and spec.optimizer == "adam" and spec.steps == 4
    assert spec.widths == (64, 128, 256, 512, 1024) and spec.seeds == (0, 1, 2)
    names = [p.name for p in spec.parametrizations]
    assert sum(n.startswith("loraplus[") for n in names) == 9
    assert sum(n.startswith("lora[") for n in names) == 3
    jobs = len(spec.widths) * -(-spec.configurations // spec.chunk)
    assert jobs >= 8
    assert -(-spec.configurations // spec.chunk) >= 2  # several jobs even at one width


def test_default_spec_is_the_cli_default() -> None:
    from loraplus_lab.sims.cli import parse_seeds, parse_widths

    spec = load_spec(SPECS / "default.toml")
    assert list(spec.widths) == parse_widths("2^6..2^14")
    assert list(spec.seeds) == parse_seeds("8")
    assert (spec.steps, spec.optimizer, spec.problem) == (4, "adam", "paper")
    assert spec.parametrizations == (
        preset("lora", eta=0.01, init="A"),
        preset("loraplus", eta=0.01, init="A"),
    )


def test_adam_grid_spec_is_a_landscape() -> None:
    spec = load_spec(SPECS / "adam_grid.toml")
    assert spec.configurations == 16 * 16
    assert len({p.eta_a for p in spec.parametrizations}) == 16
    assert len({p.eta_b for p in spec.parametrizations}) == 16
    assert len(spec.widths) == 4 and spec.widths[-1] / spec.widths[0] >= 2**6
    assert spec.problem == "general"
    assert {k: spec.problem_options[k] for k in ("samples", "rank", "outputs")} == {
        "samples": 8,
        "rank": 4,
        "outputs": 1,
    }


# ----------------------------------------------------------------------------- canonical form
def test_to_dict_is_canonical() -> None:
    a = """
    name = "same"
    steps = 3
    seeds = 3
    widths = { log2 = [6, 8] }
    problem = "general"

    [[parametrizations]]
    c_a = "-1"
    c_b = 0
    eta_a = { log2 = [-8, -6] }
    eta_b = 1
    """
    b = """
    name = "same"
    widths = [256, 64, 128]
    seeds = [2, 0, 1]
    steps = 3
    optimizer = "adam"
    betas = [0.9, 0.999]
    eps = 1e-8
    chunk = 64
    memory_limit_mb = 4096
    dtype = "float64"
    divergence_bound = 1e8

    [problem]
    kind = "general"
    rank = 1
    noise = 0
    sigma_b = 1

    [[parametrizations]]
    name = "c_A=-1,c_B=0"
    c_a = -1.0
    c_b = "0/3"
    eta_a = [0.00390625, 0.0078125, 0.015625]
    eta_b = [1.0]
    init = "A"
    n0 = 64
    """
    sa, sb = _spec(a, "a.toml"), _spec(b, "b.toml")
    da, db = sa.to_dict(), sb.to_dict()
    assert da == db
    assert json.dumps(da) == json.dumps(db)  # same key order too
    assert sa == sb  # source and path are not part of the comparison
    assert da["parametrizations"][0]["c_a"] == "-1" and da["parametrizations"][0]["c_b"] == "0"
    assert isinstance(da["parametrizations"][0]["eta_b"], float)
    assert da["widths"] == [64, 128, 256] and da["seeds"] == [0, 1, 2]
    assert list(da) == sorted(da)


def test_from_dict_round_trips() -> None:
    for f in ("small", "adam_grid"):
        spec = load_spec(SPECS / f"{f}.toml")
        back = SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert back == spec and back.to_dict() == spec.to_dict()
        assert pickle.loads(pickle.dumps(spec)) == spec and hash(back) == hash(spec)


def test_exponents_as_strings() -> None:
    text = BASE.replace('preset = "lora"', 'c_a = "-1/2"\nc_b = -0.5')
    spec = _spec(text)
    (p,) = spec.parametrizations
    assert p.c_a == p.c_b == Fraction(-1, 2) and p.name == "c_A=-1/2,c_B=-1/2"
    assert spec.to_dict()["parametrizations"][0]["c_a"] == "-1/2"


# ----------------------------------------------------------------------------- expansion
def test_expansion_counts_and_names() -> None:
    text = """
    steps = 1
    seeds = 1
    widths = { log2 = [6, 6] }

    [[parametrizations]]
    preset = "lora"
    eta = [0.001, 0.01, 0.1]

    [[parametrizations]]
    preset = "loraplus"
    eta_a = { log2 = [-12, -10], num = 3 }
    eta_b = [0.25, 0.5, 1, 2]

    [[parametrizations]]
    preset = "loraplus"
    name = "plus1"
    eta_a = [0.01]
    eta_b = { log2 = [-4, -4] }

    [[parametrizations]]
    preset = "lora-sqrt"
    eta_a = 0.01
    eta_b = { log2 = [-3, -2] }
    """
    spec = _spec(text)
    assert spec.widths == (64,)
    names = [p.name for p in spec.parametrizations]
    assert len(names) == 3 + 12 + 1 + 2
    assert names[:3] == ["lora[eta=0.001]", "lora[eta=0.01]", "lora[eta=0.1]"]
    assert all(p.eta_a == p.eta_b for p in spec.parametrizations[:3])
    assert names[3] == "loraplus[eta_a=2^-12,eta_b=2^-2]"
    assert names[4] == "loraplus[eta_a=2^-12,eta_b=2^-1]"  # eta_a-major
    assert names[14] == "loraplus[eta_a=2^-10,eta_b=2^1]"
    assert names[15] == "plus1"  # single values: the plain name
    assert names[16:] == ["lora-sqrt[eta_b=2^-3]", "lora-sqrt[eta_b=2^-2]"]
    assert spec.parametrizations[15].eta_b == 2.0**-4


def test_log2_grid_with_fractional_points() -> None:
    text = BASE.replace("eta = 0.01", "eta = { log2 = [-10, -9], num = 4 }")
    spec = _spec(text)
    etas = [p.eta_a for p in spec.parametrizations]
    assert etas[0] == 2.0**-10 and etas[-1] == 2.0**-9 and len(set(etas)) == 4
    assert len({p.name for p in spec.parametrizations}) == 4


def test_defaults_filled_in() -> None:
    spec = _spec(BASE)
    assert spec.name == "spec" and spec.problem == "paper"
    assert spec.problem_options == PROBLEM_OPTIONS["paper"]
    for key, value in DEFAULTS.items():
        assert getattr(spec, key) == value
    assert _spec(BASE, "specs/my-sweep.toml").name == "my-sweep"


# ----------------------------------------------------------------------------- memory
def test_job_memory_grows_linearly_with_width_and_chunk() -> None:
    text = BASE.replace("eta = 0.01", "eta = { log2 = [-20, -1] }")  # 20 configurations
    spec = _spec(text)
    f = spec.job_memory_mb
    assert f(128) > f(64) > 0
    assert f(4096) - f(2048) == pytest.approx(2 * (f(2048) - f(1024)))
    m = [dataclasses.replace(spec, chunk=c).job_memory_mb(1024) for c in (2, 4, 6, 8)]
    steps = [b - a for a, b in zip(m, m[1:], strict=False)]
    assert steps[0] > 0 and steps == pytest.approx([steps[0]] * 3)
    # a job never holds more configurations than the spec has
    assert dataclasses.replace(spec, chunk=100).job_memory_mb(64) == pytest.approx(
        dataclasses.replace(spec, chunk=20).job_memory_mb(64)
    )
    half = dataclasses.replace(spec, dtype="float32").job_memory_mb(2**16)
    assert half < f(2**16)
    general = _spec(text + '[problem]\nkind = "general"\nrank = 4\nsamples = 8\n')
    assert general.job_memory_mb(1024) > spec.job_memory_mb(1024)


# ----------------------------------------------------------------------------- the simulator
def test_names_mirror_the_simulator() -> None:
    from loraplus_lab.sims.toy.engine import DEFAULT_DIVERGENCE_BOUND
    from loraplus_lab.sims.toy.optim import OPTIMIZERS as SIM_OPTIMIZERS
    from loraplus_lab.sims.toy.optim import OptimizerConfig
    from loraplus_lab.sims.toy.problem import ToyProblem
    from loraplus_lab.sims.toy.simulate import DTYPES as SIM_DTYPES
    from loraplus_lab.sims.toy.simulate import PROBLEMS

    assert OPTIMIZERS == SIM_OPTIMIZERS
    assert set(DTYPES) == set(SIM_DTYPES)
    assert set(PROBLEM_OPTIONS) == set(PROBLEMS)
    for kind, options in PROBLEM_OPTIONS.items():
        params = inspect.signature(PROBLEMS[kind]).parameters
        for name, default in options.items():
            assert params[name].default == default, (kind, name)
    assert DEFAULTS["divergence_bound"] == DEFAULT_DIVERGENCE_BOUND
    OptimizerConfig(DEFAULTS["optimizer"], DEFAULTS["betas"], DEFAULTS["eps"], 0.0)
    spec = load_spec(SPECS / "adam_grid.toml")
    problem = ToyProblem.general(64, 0, **spec.problem_options)
    assert (problem.samples, problem.rank, problem.outputs) == (8, 4, 1)


def test_a_spec_runs_in_the_simulator() -> None:
    from loraplus_lab.sims.toy import simulate_batch

    spec = load_spec(SPECS / "small.toml")
    df = simulate_batch(
        spec.widths[:2],
        spec.parametrizations[:2],
        spec.seeds,
        steps=1,
        problem=spec.problem,
        problem_options=spec.problem_options,
        optimizer=spec.optimizer,
        betas=spec.betas,
        eps=spec.eps,
        weight_decay=spec.weight_decay,
        dtype=spec.dtype,
        divergence_bound=spec.divergence_bound,
        progress=False,
    )
    assert len(df) == 2 * 2 * 3 * 2


# ----------------------------------------------------------------------------- bad specs
P0 = "parametrizations[0]"
MEMORY = """
steps = 1
seeds = 8
widths = [65536]
chunk = 8
memory_limit_mb = {limit}

[[parametrizations]]
preset = "lora"
eta = {{ log2 = [-8, -1] }}
"""

# (id, TOML text, key path in the message, the bad value as the message shows it (or None))
BAD = [
    ("unknown-top", "stpes = 3\n" + BASE, "stpes", "did you mean 'steps'"),
    (
        "unknown-problem",
        BASE + '[problem]\nkind = "general"\nrnak = 2\n',
        "problem.rnak",
        "did you mean 'rank'",
    ),
    ("unknown-param", BASE + "alpah = 2\n", f"{P0}.alpah", "did you mean 'alpha'"),
    (
        "unknown-grid",
        BASE.replace("0.01", "{ log2 = [-3, -1], nmu = 3 }"),
        f"{P0}.eta.nmu",
        "'num'",
    ),
    ("steps-string", BASE.replace("steps = 2", 'steps = "4"'), "steps", '"4"'),
    ("steps-bool", BASE.replace("steps = 2", "steps = true"), "steps", "true"),
    ("steps-zero", BASE.replace("steps = 2", "steps = 0"), "steps", "0"),
    ("widths-string", BASE.replace("[64, 128]", '"64"'), "widths", '"64"'),
    ("widths-empty", BASE.replace("[64, 128]", "[]"), "widths", "[]"),
    ("width-negative", BASE.replace("[64, 128]", "[64, -128]"), "widths[1]", "-128"),
    ("width-zero", BASE.replace("[64, 128]", "[0]"), "widths[0]", "0"),
    ("width-float", BASE.replace("[64, 128]", "[64.0]"), "widths[0]", "64.0"),
    ("width-repeated", BASE.replace("[64, 128]", "[64, 64]"), "widths", "[64, 64]"),
    ("widths-log2-down", BASE.replace("[64, 128]", "{ log2 = [10, 6] }"), "widths.log2", "[10, 6]"),
    ("widths-log2-float", BASE.replace("[64, 128]", "{ log2 = [6, 7.5] }"), "widths.log2", "7.5"),
    ("eta-empty", BASE.replace("eta = 0.01", "eta_a = []\neta_b = 1"), f"{P0}.eta_a", "[]"),
    (
        "num-zero",
        BASE.replace("eta = 0.01", "eta = { log2 = [-3, -1], num = 0 }"),
        f"{P0}.eta.num",
        "0",
    ),
    (
        "num-one-point-many",
        BASE.replace("eta = 0.01", "eta = { log2 = [-3, -3], num = 3 }"),
        f"{P0}.eta.num",
        "3",
    ),
    (
        "num-missing-fractional",
        BASE.replace("eta = 0.01", "eta = { log2 = [-3.5, -1] }"),
        f"{P0}.eta.num",
        "-3.5",
    ),
    ("rate-negative", BASE.replace("eta = 0.01", "eta_a = -0.1\neta_b = 1"), f"{P0}.eta_a", "-0.1"),
    ("rate-zero", BASE.replace("eta = 0.01", "eta = 0"), f"{P0}.eta", "0"),
    ("rate-inf", BASE.replace("eta = 0.01", "eta = inf"), f"{P0}.eta", "inf"),
    ("rate-nan", BASE.replace("eta = 0.01", "eta = nan"), f"{P0}.eta", "nan"),
    ("rate-in-list", BASE.replace("eta = 0.01", "eta = [0.1, -1]"), f"{P0}.eta[1]", "-1"),
    ("rate-string", BASE.replace("eta = 0.01", 'eta = "0.01"'), f"{P0}.eta", '"0.01"'),
    ("rate-bool", BASE.replace("eta = 0.01", "eta = true"), f"{P0}.eta", "true"),
    ("eta-and-eta-a", BASE + "eta_a = 0.1\n", f"{P0}.eta_a", "0.1"),
    ("eta-a-alone", BASE.replace("eta = 0.01", "eta_a = 0.1"), f"{P0}.eta_b", None),
    ("no-rate", BASE.replace("eta = 0.01", ""), f"{P0}.eta", None),
    ("unknown-preset", BASE.replace('"lora"', '"loraplusplus"'), f"{P0}.preset", "loraplusplus"),
    ("unknown-optimizer", 'optimizer = "sgd"\n' + BASE, "optimizer", '"sgd"'),
    ("unknown-problem-kind", BASE + '[problem]\nkind = "big"\n', "problem.kind", '"big"'),
    ("seeds-float", BASE.replace("seeds = 2", "seeds = 2.5"), "seeds", "2.5"),
    ("seeds-string", BASE.replace("seeds = 2", 'seeds = "3"'), "seeds", '"3"'),
    ("seeds-bool", BASE.replace("seeds = 2", "seeds = true"), "seeds", "true"),
    ("seeds-zero", BASE.replace("seeds = 2", "seeds = 0"), "seeds", "0"),
    ("seed-negative", BASE.replace("seeds = 2", "seeds = [0, -1]"), "seeds[1]", "-1"),
    ("seed-float", BASE.replace("seeds = 2", "seeds = [0, 1.0]"), "seeds[1]", "1.0"),
    ("seed-bool", BASE.replace("seeds = 2", "seeds = [false]"), "seeds[0]", "false"),
    ("seeds-empty", BASE.replace("seeds = 2", "seeds = []"), "seeds", "[]"),
    ("seed-repeated", BASE.replace("seeds = 2", "seeds = [1, 1]"), "seeds", "[1, 1]"),
    ("exponent-abc", BASE.replace('preset = "lora"', 'c_a = "abc"\nc_b = 0'), f"{P0}.c_a", "abc"),
    ("exponent-bool", BASE.replace('preset = "lora"', "c_a = 0\nc_b = true"), f"{P0}.c_b", "true"),
    ("preset-and-c-a", BASE + 'c_a = "-1"\n', f"{P0}.c_a", '"-1"'),
    ("c-a-alone", BASE.replace('preset = "lora"', "c_a = -1"), f"{P0}.c_b", None),
    ("missing-steps", BASE.replace("steps = 2", ""), "steps", None),
    ("missing-widths", BASE.replace("widths = [64, 128]", ""), "widths", None),
    ("missing-seeds", BASE.replace("seeds = 2", ""), "seeds", None),
    ("missing-parametrizations", BASE.split("[[")[0], "parametrizations", None),
    (
        "parametrizations-empty",
        "parametrizations = []\n" + BASE.split("[[")[0],
        "parametrizations",
        "[]",
    ),
    (
        "rank-above-width",
        BASE.replace("[64, 128]", "[4, 64]") + '[problem]\nkind = "general"\nrank = 8\n',
        "problem.rank",
        "8",
    ),
    ("paper-with-rank", BASE + "[problem]\nrank = 2\n", "problem.rank", "2"),
    (
        "outputs-bad",
        BASE + '[problem]\nkind = "general"\noutputs = "m"\n',
        "problem.outputs",
        '"m"',
    ),
    ("sigma-b-zero", BASE + "[problem]\nsigma_b = 0\n", "problem.sigma_b", "0"),
    ("memory-chunk", MEMORY.format(limit=100), "chunk", "chunk = 8"),
    ("memory-limit", MEMORY.format(limit=1), "memory_limit_mb", "memory_limit_mb = 1"),
    (
        "duplicate-names",
        BASE + BASE.split("widths = [64, 128]")[1],
        "parametrizations[1].name",
        '"lora"',
    ),
    (
        "duplicate-after-expansion",
        BASE
        + '[[parametrizations]]\npreset = "lora"\nname = "lora[eta=0.1]"\neta = 0.1\n'
        + '[[parametrizations]]\npreset = "lora"\neta = [0.1, 1]\n',
        "parametrizations[2].name",
        '"lora[eta=0.1]"',
    ),
    ("betas-bad", "betas = [0.9, 1.0]\n" + BASE, "betas[1]", "1.0"),
    ("betas-short", "betas = [0.9]\n" + BASE, "betas", "[0.9]"),
    ("dtype-bad", 'dtype = "float16"\n' + BASE, "dtype", '"float16"'),
    ("eps-negative", "eps = -1e-8\n" + BASE, "eps", "-1e-08"),
    ("chunk-bool", "chunk = false\n" + BASE, "chunk", "false"),
    ("init-bad", BASE + 'init = "C"\n', f"{P0}.init", '"C"'),
    ("n0-zero", BASE + "n0 = 0\n", f"{P0}.n0", "0"),
    ("name-bad", 'name = "my sweep"\n' + BASE, "name", '"my sweep"'),
    ("param-name-empty", BASE + 'name = ""\n', f"{P0}.name", '""'),
]


@pytest.mark.parametrize("text,key,value", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_spec_is_one_line_naming_file_key_value(
    tmp_path: Path, text: str, key: str, value: str | None
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {key}: "), msg
    assert info.value.key == key and info.value.path == str(path)
    if value is not None:
        assert value in msg, msg


def test_one_point_log2_range_is_fine() -> None:
    text = BASE.replace("[64, 128]", "{ log2 = [7, 7] }")
    text = text.replace("eta = 0.01", "eta = { log2 = [-5, -5] }")
    spec = _spec(text)
    assert spec.widths == (128,) and spec.parametrizations[0].eta_a == 2.0**-5
    assert spec.parametrizations[0].name == "lora"


def test_memory_message_suggests_a_chunk_that_fits(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"use chunk = (\d+) or less") as info:
        parse_spec(MEMORY.format(limit=100))
    chunk = int(info.value.args[0].split("use chunk = ")[1].split()[0])
    assert 1 <= chunk < 8
    fixed = parse_spec(MEMORY.format(limit=100).replace("chunk = 8", f"chunk = {chunk}"))
    assert fixed.job_memory_mb(65536) <= 100
    too_big = MEMORY.format(limit=100).replace("chunk = 8", f"chunk = {chunk + 1}")
    with pytest.raises(SpecError, match="chunk"):
        parse_spec(too_big)


def test_missing_file_and_invalid_toml(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SpecError, match=r"nope\.toml: no such spec file"):
        load_spec(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text(BASE + "widths = = 3\n")
    with pytest.raises(SpecError) as info:
        load_spec(broken)
    msg = str(info.value)
    assert msg.startswith(f"{broken}: invalid TOML") and "line 9" in msg and "\n" not in msg
    with pytest.raises(SpecError, match="is a folder"):
        load_spec(tmp_path)
