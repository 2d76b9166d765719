"""Targets are data plus one function: a target defined outside hf-prune is one registration away from the
command line, the config validation and the report."""

from __future__ import annotations

import json

import pytest

from hf_prune.allocation.base import Allocation, AllocationRequest
from hf_prune.cli import main
from hf_prune.targets import TARGETS, Target, get_target, register_target


def allocate_mlp_only_late_layers(request: AllocationRequest) -> Allocation:
    """Keep every group of the first half of the layers and half of the rest (a toy rule)."""
    layers = max(scope.layer for scope in request.scopes) + 1
    return Allocation({scope.name: scope.num_groups if scope.layer < layers // 2 else scope.num_groups // 2
                       for scope in request.scopes})


@pytest.fixture
def late_target():
    target = register_target(Target("late", "tests.test_targets:allocate_mlp_only_late_layers"))
    yield target
    TARGETS.pop("late")


def test_a_registered_target_runs_from_the_command_line(late_target, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--target", "late", "--output", str(out)]) == 0
    layers = json.loads((out / "hf_prune_report.json").read_text())["layers"]
    assert [row["neurons_after"] for row in layers] == [344, 344, 172, 172]
    assert "(late)" in capsys.readouterr().out


def test_target_facts_come_from_the_registry():
    assert get_target("hyperflux").learned and get_target("search").planner and not get_target("emp").planner
    with pytest.raises(ValueError, match="already registered"):
        register_target(Target("emp", ".allocation.emp:allocate_emp"))
    with pytest.raises(Exception, match="unknown target 'nope'"):
        get_target("nope")
