"""Public simulator API: one problem (:func:`simulate`) or widths × parametrizations × seeds
(:func:`simulate_batch`), returning tidy pandas DataFrames (a row per configuration × seed × step).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from loraplus_lab.sims.checks import InputError, nonnegative_int, positive, positive_int
from loraplus_lab.sims.params import Parametrization
from loraplus_lab.sims.toy.engine import DEFAULT_DIVERGENCE_BOUND, STATS, run_batch
from loraplus_lab.sims.toy.optim import OptimizerConfig
from loraplus_lab.sims.toy.problem import ToyProblem, one_blas_thread

PROBLEMS: dict[str, Callable[..., ToyProblem]] = {
    "paper": ToyProblem.paper,
    "general": ToyProblem.general,
}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def _stack(problems: Sequence[ToyProblem], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    def t(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).to(dtype)

    return (
        t([p.X for p in problems]),
        t([p.residual0() for p in problems]),
        t([p.A0 for p in problems]),
        t([p.B0 for p in problems]),
    )


def _stack_test(problems: Sequence[ToyProblem], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``X_test``/``R_test`` keyword arguments of :func:`run_batch` (empty without a test set)."""
    if problems[0].X_test is None:
        return {}
    return {
        "X_test": torch.from_numpy(np.stack([p.X_test for p in problems])).to(dtype),
        "R_test": torch.from_numpy(np.stack([p.residual0_test() for p in problems])).to(dtype),
    }


def simulate(
    problem: ToyProblem,
    *,
    eta_a: float,
    eta_b: float,
    steps: int,
    optimizer: str = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    dtype: str | torch.dtype = "float64",
    divergence_bound: float = DEFAULT_DIVERGENCE_BOUND,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> pd.DataFrame:
    """Train the LoRA factors of one toy problem and record the feature updates at every step.

    ``on_step(t, tensors)`` is called after each step with the signed tensors of the step
    (``A``, ``B``, ``Z_A``, ``Z_B``, ``delta1..3``, ``dZ_B``, ``alive``; leading dimensions
    configuration × seed, here 1 × 1), e.g. to check ``ΔZ_B = δ¹ + δ² + δ³`` entry by entry.

    Returns a DataFrame with one row per step ``t = 0..steps`` and the columns ``step``, every
    statistic of :data:`loraplus_lab.sims.toy.engine.STATS` (``delta1..3`` are the mean of
    ``|δ¹|``, ``|δ²|``, ``|δ³|`` over samples and outputs, NaN at step 0), ``diverged`` and
    ``diverged_step``.
    """
    if not isinstance(problem, ToyProblem):
        raise InputError(f"problem must be a ToyProblem, got {type(problem).__name__}")
    steps = positive_int("steps", steps)
    eta_a = positive("eta_a", eta_a)
    eta_b = positive("eta_b", eta_b)
    opt = OptimizerConfig(optimizer, betas, eps, weight_decay)
    dt = _dtype(dtype)
    X, R, A0, B0 = _stack([problem], dt)
    res = run_batch(
        X,
        R,
        A0,
        B0,
        torch.tensor([problem.scale], dtype=torch.float64),
        torch.tensor([eta_a], dtype=torch.float64),
        torch.tensor([eta_b], dtype=torch.float64),
        steps,
        opt,
        divergence_bound=divergence_bound,
        on_step=on_step,
        **_stack_test([problem], dt),
    )
    df = pd.DataFrame({"step": np.arange(steps + 1)})
    for k in STATS:
        df[k] = res[k][:, 0, 0]
    ds = int(res["diverged_step"][0, 0])
    df["diverged"] = (ds >= 0) & (df["step"] >= ds)
    df["diverged_step"] = ds
    df.attrs["config"] = {
        "eta_a": eta_a,
        "eta_b": eta_b,
        "steps": steps,
        "optimizer": opt.name,
        "betas": list(opt.betas),
        "eps": opt.eps,
        "weight_decay": opt.weight_decay,
        "dtype": str(dt).removeprefix("torch."),
        "width": problem.width,
        "scale": problem.scale,
    }
    return df


def simulate_batch(
    widths: Sequence[int],
    parametrizations: Sequence[Parametrization],
    seeds: Sequence[int],
    *,
    steps: int,
    problem: str = "paper",
    problem_options: Mapping[str, Any] | None = None,
    optimizer: str = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    dtype: str | torch.dtype = "float64",
    divergence_bound: float = DEFAULT_DIVERGENCE_BOUND,
    progress: bool | None = None,
    chunk: int | None = None,
) -> pd.DataFrame:
    """Width sweep: every parametrization × seed at every width, vectorised over configurations.

    For each width (and each initialisation among the parametrizations) the problems of all
    seeds are drawn once and every configuration × seed runs in one batch of tensors; the only
    Python loops are over widths, initialisations and steps.

    Args:
        widths: widths ``n`` to simulate.
        parametrizations: rate rules; ``η_A(n)``, ``η_B(n)``, init and ``s`` come from each.
        seeds: problem seeds (the problem at seed ``k`` is the same for every parametrization).
        steps: optimizer steps.
        problem: ``"paper"`` (rank-1 single-sample toy) or ``"general"``.
        problem_options: keyword options of the problem constructor (rank, outputs, samples, ...).
        optimizer, betas, eps, weight_decay: as in :func:`simulate`.
        dtype: ``"float64"`` (default) or ``"float32"``.
        divergence_bound: loss above which a configuration counts as diverged.
        progress: show a progress bar (default: when stderr is a terminal).
        chunk: at most this many configurations in one batch (default: all), to bound memory;
            a configuration's result does not depend on the chunking beyond round-off.

    Returns:
        A tidy DataFrame with one row per width × parametrization × seed × step and the columns
        ``width, param, init, c_a, c_b, eta_a_base, eta_b_base, eta_a, eta_b, ratio, scale, seed,
        step``, the statistics of :data:`STATS`, ``diverged`` and ``diverged_step``. The full
        configuration is in ``df.attrs["config"]``.
    """
    widths = [positive_int("width", w) for w in widths]
    seeds = list(seeds)
    for s in seeds:
        nonnegative_int("seed", s)
    params = list(parametrizations)
    if not widths:
        raise InputError("widths is empty")
    if not seeds:
        raise InputError("seeds is empty")
    if not params:
        raise InputError("no parametrization given")
    for p in params:
        if not isinstance(p, Parametrization):
            raise InputError(f"expected a Parametrization, got {p!r}")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise InputError(f"parametrization names must be unique, got {names}")
    steps = positive_int("steps", steps)
    if chunk is not None:
        chunk = positive_int("chunk", chunk)
    if problem not in PROBLEMS:
        raise InputError(f"problem must be one of {', '.join(PROBLEMS)}, got {problem!r}")
    opts = dict(problem_options or {})
    if problem == "paper" and opts.keys() - {"sigma_b"}:
        raise InputError(f"the paper toy takes no option {sorted(opts.keys() - {'sigma_b'})}")
    opt = OptimizerConfig(optimizer, betas, eps, weight_decay)
    dt = _dtype(dtype)
    factory = PROBLEMS[problem]
    for w in widths:  # fail early, before any work, on a rank above a width
        rank = int(opts.get("rank", 1))
        if rank > w:
            raise InputError(f"rank r={rank} is above the width n={w}")

    inits = sorted({p.init for p in params})
    if progress is None:
        progress = sys.stderr.isatty()
    groups = [[p for p in params if p.init == init] for init in inits]
    size = chunk or max(len(g) for g in groups)
    batches = [g[i : i + size] for g in groups for i in range(0, len(g), size)]
    bar = tqdm(
        total=len(widths) * len(batches) * steps,
        desc="width sweep",
        unit="step",
        disable=not progress,
        leave=False,
    )
    frames = []
    try:
        for width in widths:
            for group in groups:
                init = group[0].init
                with one_blas_thread():
                    problems = [factory(width, seed, init=init, **opts) for seed in seeds]
                    X, R, A0, B0 = _stack(problems, dt)
                    test = _stack_test(problems, dt)
                rank = problems[0].rank
                parts = []
                for i in range(0, len(group), size):
                    part = group[i : i + size]
                    bar.set_postfix(width=width, init=init)
                    parts.append(
                        run_batch(
                            X,
                            R,
                            A0,
                            B0,
                            *rate_tensors(part, width, rank),
                            steps,
                            opt,
                            divergence_bound=divergence_bound,
                            on_progress=bar.update if progress else None,
                            **test,
                        )
                    )
                res = {k: np.concatenate([r[k] for r in parts], axis=1) for k in STATS}
                res["diverged_step"] = np.concatenate([r["diverged_step"] for r in parts])
                frames.append(tidy_rows(res, width, group, seeds, steps, rank))
    finally:
        bar.close()
    df = concat_ordered(frames, params)
    df.attrs["config"] = batch_config(
        widths, params, seeds, steps, problem, opts, opt, dt, divergence_bound, chunk
    )
    return df


def batch_config(
    widths: Sequence[int],
    params: Sequence[Parametrization],
    seeds: Sequence[int],
    steps: int,
    problem: str,
    problem_options: Mapping[str, Any],
    opt: OptimizerConfig,
    dtype: torch.dtype,
    divergence_bound: float,
    chunk: int | None,
) -> dict[str, Any]:
    """The record of a :func:`simulate_batch` call (its ``df.attrs["config"]``): every input
    that determines the results, JSON-friendly."""
    return {
        "widths": list(widths),
        "seeds": list(seeds),
        "steps": steps,
        "problem": problem,
        "problem_options": dict(problem_options),
        "optimizer": opt.name,
        "betas": list(opt.betas),
        "eps": opt.eps,
        "weight_decay": opt.weight_decay,
        "dtype": str(dtype).removeprefix("torch."),
        "divergence_bound": divergence_bound,
        "chunk": chunk,
        "parametrizations": [p.to_dict() for p in params],
    }


def rate_tensors(
    params: Sequence[Parametrization], width: int, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LoRA multiplier ``s`` and the rates ``η_A(n)``, ``η_B(n)`` of each parametrization at
    ``width``, as the float64 tensors ``(scale, eta_a, eta_b)`` of a batched run."""
    return tuple(
        torch.tensor([f(p) for p in params], dtype=torch.float64)
        for f in (lambda p: p.scale(rank), lambda p: p.rate_a(width), lambda p: p.rate_b(width))
    )


def concat_ordered(
    frames: Sequence[pd.DataFrame], params: Sequence[Parametrization]
) -> pd.DataFrame:
    """The frames of a sweep as one DataFrame in the canonical row order: width, parametrization
    (in the order given), seed, step. Reordered only where the frames are not in it already."""
    df = pd.concat(frames, ignore_index=True)
    order = {p.name: i for i, p in enumerate(params)}
    keys = (df["step"], df["seed"], df["param"].map(order), df["width"])
    idx = np.lexsort([k.to_numpy() for k in keys])
    if not np.array_equal(idx, np.arange(len(df))):
        df = df.take(idx).reset_index(drop=True)
    return df


def tidy_rows(
    res: dict[str, np.ndarray],
    width: int,
    group: Sequence[Parametrization],
    seeds: Sequence[int],
    steps: int,
    rank: int,
) -> pd.DataFrame:
    """Tidy rows (one per configuration × seed × step) from arrays ``(steps + 1, C, S)`` of a
    batched run at one width, with each parametrization's rates and scale as columns."""
    C, S, T = len(group), len(seeds), steps + 1
    # rows in the canonical order: parametrization, seed, step
    ci, si, step = np.meshgrid(np.arange(C), np.arange(S), np.arange(T), indexing="ij")
    step, ci, si = step.ravel(), ci.ravel(), si.ravel()
    cols: dict[str, Any] = {
        "width": np.full(step.shape, width),
        "param": np.array([p.name for p in group], dtype=object)[ci],
        "init": np.array([p.init for p in group], dtype=object)[ci],
        "c_a": np.array([str(p.c_a) for p in group], dtype=object)[ci],
        "c_b": np.array([str(p.c_b) for p in group], dtype=object)[ci],
        "eta_a_base": np.array([p.eta_a for p in group])[ci],
        "eta_b_base": np.array([p.eta_b for p in group])[ci],
        "eta_a": np.array([p.rate_a(width) for p in group])[ci],
        "eta_b": np.array([p.rate_b(width) for p in group])[ci],
        "ratio": np.array([p.ratio(width) for p in group])[ci],
        "scale": np.array([p.scale(rank) for p in group])[ci],
        "seed": np.asarray(seeds)[si],
        "step": step,
    }
    for k in STATS:
        cols[k] = res[k].transpose(1, 2, 0).ravel()
    ds = res["diverged_step"][ci, si]
    cols["diverged"] = (ds >= 0) & (step >= ds)
    cols["diverged_step"] = ds
    return pd.DataFrame(cols)
