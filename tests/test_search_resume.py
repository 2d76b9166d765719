"""A search stopped part-way (killed, or Ctrl-C) resumes with ``--resume`` to the plan an uninterrupted run finds, bit
for bit: finished calls of its cost meter are replayed from ``--state-dir``, and a sweep (``--sequential`` /
``--layerwise``) goes on from the last layer boundary it wrote."""

import json

import pytest
import torch

from hf_prune.adapters import get_adapter
from hf_prune.errors import ConfigError
from hf_prune.plan.planner import make_plan
from hf_prune.plan.search import journal
from hf_prune.run.cli import main

from .conftest import make_model
from .test_search import calibration, search_config  # noqa: F401  (calibration: the search tests' fixture)


class Killed(Exception):
    """Stands for the process being killed: nothing is saved on the way out."""


def _kill_after(monkeypatch, model, finished_calls: int, layer: int) -> None:
    """Raise :class:`Killed` the first time decoder layer ``layer`` runs once ``finished_calls`` calls are journaled."""
    record, finished = journal.SearchJournal.record, []

    def counting(self, *args, **kwargs):
        record(self, *args, **kwargs)
        finished.append(True)

    def maybe_kill(module, args):
        if len(finished) >= finished_calls:
            raise Killed

    monkeypatch.setattr(journal.SearchJournal, "record", counting)
    get_adapter(model).decoder_layers(model)[layer].register_forward_pre_hook(maybe_kill)


def _state(tmp_path, **options):
    return {"state_dir": str(tmp_path / "state"), **options}


def _offloaded(model):
    from accelerate import cpu_offload

    cpu_offload(model, execution_device=torch.device("cpu"))
    return model


@pytest.mark.parametrize("costs, compensate, offload, probe_rows", [
    ("global", "none", False, None), ("local", "lstsq", False, None), ("global", "lstsq", True, None),
    ("local", "lstsq", True, 1)])
def test_a_killed_sweep_resumes_to_the_uninterrupted_plan(calibration, tmp_path, monkeypatch, costs, compensate,
                                                          offload, probe_rows):
    """Killed in the middle of the first cost table (its base call finished, layers 0-1 of the sweep written): the
    resumed run replays the base, goes on from layer 2 and ends where the uninterrupted run ends — in memory and
    offloaded layer by layer (as --layerwise runs it); with the probes on one of the two rows, the replayed base
    brings back its KL on that row too."""
    options = dict(sequential=True, search_costs=costs, compensate=compensate, search_probe_rows=probe_rows)
    expected = make_plan(make_model("llama"), search_config(**options), input_ids=calibration)
    monkeypatch.setattr(journal, "SWEEP_CHECKPOINT_SECONDS", 0.0)  # write at every layer boundary

    model = _offloaded(make_model("llama")) if offload else make_model("llama")
    _kill_after(monkeypatch, model, finished_calls=1, layer=2)
    with pytest.raises(Killed):
        make_plan(model, search_config(**_state(tmp_path, **options)), input_ids=calibration)
    record = json.loads((tmp_path / "state" / "search_state.json").read_text())
    assert [call["kind"] for call in record["calls"]] == ["base"] and record["sweep"]["layer"] == 1
    assert record["progress"] == "search call 2, layer 2"
    monkeypatch.undo()

    fresh = _offloaded(make_model("llama")) if offload else make_model("llama")
    resumed = make_plan(fresh, search_config(**_state(tmp_path, resume=True, **options)), input_ids=calibration)
    assert resumed.kept == expected.kept
    assert resumed.details["search_kl"] == expected.details["search_kl"]
    assert resumed.details["rounds"] == expected.details["rounds"]
    assert resumed.details["layer_passes"] == expected.details["layer_passes"]


def test_an_in_memory_search_replays_its_finished_calls(calibration, tmp_path, monkeypatch):
    """In memory a call is not written half-done: the killed call is computed again, the ones before it replayed."""
    expected = make_plan(make_model("qwen2"), search_config(), input_ids=calibration)
    model = make_model("qwen2")
    _kill_after(monkeypatch, model, finished_calls=3, layer=0)  # dense base, first table, first plan
    with pytest.raises(Killed):
        make_plan(model, search_config(**_state(tmp_path)), input_ids=calibration)
    assert len(json.loads((tmp_path / "state" / "search_state.json").read_text())["calls"]) == 3
    monkeypatch.undo()
    resumed = make_plan(make_model("qwen2"), search_config(**_state(tmp_path, resume=True)), input_ids=calibration)
    assert resumed.kept == expected.kept and resumed.details["rounds"] == expected.details["rounds"]


def test_ctrl_c_stops_a_sweep_at_a_layer_boundary_with_its_state_written(calibration, tmp_path, monkeypatch):
    """The first Ctrl-C lets the layer finish, writes the sweep's state (however recently it was written) and
    stops; the resumed run ends where the uninterrupted one does."""
    import os
    import signal

    options = dict(sequential=True)
    expected = make_plan(make_model("llama"), search_config(**options), input_ids=calibration)
    model = make_model("llama")
    record, finished, sent = journal.SearchJournal.record, [], []

    def counting(self, *args, **kwargs):
        record(self, *args, **kwargs)
        finished.append(True)

    def interrupt(module, args):
        if finished and not sent:  # in the first cost table's sweep
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(journal.SearchJournal, "record", counting)
    get_adapter(model).decoder_layers(model)[1].register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt, match="stopped after layer 1"):
        make_plan(model, search_config(**_state(tmp_path, **options)), input_ids=calibration)
    assert json.loads((tmp_path / "state" / "search_state.json").read_text())["sweep"]["layer"] == 1
    monkeypatch.undo()
    resumed = make_plan(make_model("llama"), search_config(**_state(tmp_path, resume=True, **options)),
                        input_ids=calibration)
    assert resumed.kept == expected.kept and resumed.details["rounds"] == expected.details["rounds"]


def _interrupted(calibration, tmp_path, monkeypatch) -> None:
    """A search killed in its second call leaves its state in ``tmp_path``."""
    model = make_model("qwen2")
    _kill_after(monkeypatch, model, finished_calls=2, layer=0)
    with pytest.raises(Killed):
        make_plan(model, search_config(**_state(tmp_path)), input_ids=calibration)
    monkeypatch.undo()


def test_resume_refuses_the_state_of_another_run(calibration, tmp_path, monkeypatch):
    _interrupted(calibration, tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="belongs to a run with other options"):
        make_plan(make_model("qwen2"), search_config(**_state(tmp_path, resume=True), sparsity=0.4),
                  input_ids=calibration)


def test_resume_refuses_a_state_another_version_wrote(calibration, tmp_path, monkeypatch):
    """Costs a search measured with another hf-prune are not mixed with this one's: the record names its version."""
    import hf_prune.runtime.saved_state as saved_state

    _interrupted(calibration, tmp_path, monkeypatch)
    monkeypatch.setattr(saved_state, "__version__", "9.9.9")
    with pytest.raises(ConfigError, match=r"written by hf-prune \S+, this is 9\.9\.9; .*--restart"):
        make_plan(make_model("qwen2"), search_config(**_state(tmp_path, resume=True)), input_ids=calibration)


def test_the_command_line_keeps_the_state_until_the_model_is_written(capsys, tmp_path):
    """A finished run leaves no state beside its output; a state from an interrupted run must be resumed or
    restarted, before anything is loaded; --resume is refused where the target keeps no state."""
    out = tmp_path / "out"
    args = ["--target", "search", "--sparsity", "0.35", "--mlp-levels", "4", "--refine-rounds", "1",
            "--calibration-samples", "8", "--seq-len", "32", "--output", str(out)]
    assert main(args) == 0
    assert (out / "config.json").is_file() and not (tmp_path / "out.search-state").exists()

    state = tmp_path / "again.search-state"
    state.mkdir()
    (state / "search_state.json").write_text(json.dumps({"progress": "search call 3", "calls": []}))
    again = [*args[:-1], str(tmp_path / "again")]
    assert main(again) == 2
    assert "--resume to continue it, or --restart" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
    assert main([*again, "--restart"]) == 0 and not state.exists()
    assert main(["--target", "emp", "--resume", "--output", str(tmp_path / "emp")]) == 2
    assert "--resume applies to --target hyperflux / search only" in capsys.readouterr().err


def test_after_ctrl_c_the_search_says_how_far_it_got_and_how_to_resume(tmp_path):
    from hf_prune.run.cli import build_prune_parser, prune_settings
    from hf_prune.run.pipeline import interrupted_message, start

    state = tmp_path / "out.search-state"
    state.mkdir()
    (state / "search_state.json").write_text(json.dumps({"progress": "search call 2, layer 5", "calls": []}))
    argv = ["--target", "search", "--layerwise", "--output", str(tmp_path / "out")]
    config, options, model = prune_settings(build_prune_parser().parse_args(argv))
    message = interrupted_message(argv, start(model, config, options, None).config)
    assert message.startswith(f"interrupted at search call 2, layer 5; the state is saved in {state}; resume with: ")
    assert message.endswith("--resume")
