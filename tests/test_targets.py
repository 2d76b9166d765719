"""A target is one file plus one registration: a target defined outside hf-prune is one ``TARGETS.register`` away
from the command line, the config validation, the report and the card."""

from __future__ import annotations

import json

import pytest

from hf_prune.config import PruningConfig
from hf_prune.errors import ConfigError
from hf_prune.plan.allocation import Allocation, AllocationRequest, Target
from hf_prune.registry import TARGETS
from hf_prune.run.cli import main


def allocate_mlp_only_late_layers(request: AllocationRequest) -> Allocation:
    """Keep every group of the first half of the layers and half of the rest (a toy rule)."""
    layers = max(scope.layer for scope in request.scopes) + 1
    return Allocation({scope.name: scope.num_groups if scope.layer < layers // 2 else scope.num_groups // 2
                       for scope in request.scopes}, {"layers": layers})


@pytest.fixture
def late_target():
    yield TARGETS.register("late", Target(allocate_mlp_only_late_layers,
                                          describe=lambda report: [f"late: {report.allocation['layers']} layers"]))
    TARGETS.unregister("late")


def test_a_registered_target_runs_from_the_command_line(late_target, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--target", "late", "--output", str(out)]) == 0
    layers = json.loads((out / "hf_prune_report.json").read_text())["layers"]
    assert [row["neurons_after"] for row in layers] == [344, 344, 172, 172]
    printed = capsys.readouterr().out
    assert "(late)" in printed and "late: 4 layers" in printed
    assert "late: 4 layers" in (out / "README.md").read_text(), "the card says what the target says"


def test_a_bare_rule_is_a_target_too(tmp_path):
    TARGETS.register("late_rule", allocate_mlp_only_late_layers)
    try:
        assert main(["--target", "late_rule", "--output", str(tmp_path / "out")]) == 0
    finally:
        TARGETS.unregister("late_rule")


def test_target_facts_come_from_the_registry():
    assert TARGETS.traits("hyperflux")["learned"] and TARGETS.traits("search")["section"] == "search"
    assert PruningConfig(target="search").units == "all", "the search's own default units"
    assert PruningConfig(target="search").held_out_rows == 4 and PruningConfig().held_out_rows == 0
    with pytest.raises(ValueError, match="already registered"):
        TARGETS.register("emp", allocate_mlp_only_late_layers)
    with pytest.raises(ConfigError, match="unknown target 'nope'"):
        TARGETS.require("nope")
    with pytest.raises(ConfigError, match="mlp_multiple applies to --target emp / search only"):
        PruningConfig(target="uniform", mlp_multiple=64)
