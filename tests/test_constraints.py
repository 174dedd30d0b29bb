"""Declared parameter constraints: every public function lists the constraints of its scalar
arguments once (lowrank_hpc._checks.constrained), they name the argument when violated, and they
run once per call, never per iteration."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from lowrank_hpc import _checks, ops, recover

DECLARED = [ops.kernel_product, ops.sparse_times_dense, ops.sampled_product, ops.lowrank_product,
            ops.soft_threshold, ops.sum_of_squares, recover.als, recover.batched_als, recover.factored_gd,
            recover.batched_factored_gd]


@pytest.mark.parametrize("function", DECLARED, ids=lambda f: f.__name__)
def test_constraints_are_declared_for_real_parameters(function):
    parameters = inspect.signature(function).parameters
    assert function.constraints and set(function.constraints) <= set(parameters)


def _completion(rng):
    flat = rng.choice(60, 30, replace=False)
    return flat // 6, flat % 6, rng.standard_normal(30)


@pytest.mark.parametrize("change, error, match", [
    ({"max_iter": -1}, ValueError, "als: max_iter must be >= 0, got -1"),
    ({"max_iter": 2.0}, TypeError, "als: max_iter must be an int, got float 2.0"),
    ({"tol": float("nan")}, ValueError, "als: tol must be a finite number >= 0"),
    ({"progress": "yes"}, TypeError, "als: progress must be True or False"),
    ({"checkpoint_every": 0}, ValueError, "als: checkpoint_every must be >= 1"),
    ({"callback": 3}, TypeError, "als: callback must be callable"),
    ({"reg_scaling": "rows"}, ValueError, r"als: reg_scaling must be one of \('none', 'count'\)"),
    ({"reg": -0.5}, ValueError, "als: reg must be a finite number >= 0"),
    ({"seed": -1}, ValueError, "als: seed must be None or an integer >= 0"),
    ({"seed": (1, 2, 3)}, ValueError, "als: seed must be None, an integer in"),
])
def test_violations_name_the_function_and_the_argument(rng, change, error, match):
    rows, cols, vals = _completion(rng)
    with pytest.raises(error, match=match):
        recover.als(rows, cols, vals, (10, 6), 2, **change)


def test_normalized_values_reach_the_body(rng):
    rows, cols, vals = _completion(rng)
    result = recover.als(rows, cols, vals, (np.int32(10), np.int64(6)), np.int64(2), max_iter=np.int16(3), seed=4)
    assert result.n_iter == 3 and type(result.n_iter) is int


def test_constraints_run_once_per_call(rng, monkeypatch):
    rows, cols, vals = _completion(rng)
    calls = []
    check = recover.als.constraints["max_iter"]
    monkeypatch.setitem(recover.als.constraints, "max_iter", lambda *a: calls.append(a) or check(*a))
    recover.als(rows, cols, vals, (10, 6), 2, max_iter=7, tol=0.0, seed=1)
    assert calls == [("als", "max_iter", 7)]


@pytest.mark.parametrize("check,accepted,refused,interval", [
    (_checks.fraction, [1e-300, 0.5, 0.999], [0, 0.0, 1, 1.5, -0.1, float("nan"), float("inf")], "(0, 1)"),
    (_checks.fraction_or_zero, [0, 0.0, 0.5], [1, -1e-300, float("nan"), float("-inf")], "[0, 1)"),
])
def test_unit_interval_checks(check, accepted, refused, interval):
    for value in accepted:
        assert check("f", "x", value) == value
    for value in refused:
        with pytest.raises(ValueError, match=rf"f: x must be in \{interval[0]}0, 1\), got"):
            check("f", "x", value)
    with pytest.raises(TypeError):
        check("f", "x", "0.5")
