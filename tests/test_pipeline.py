"""The user's whole path: prune → recover (LoRA) → lm-eval retention → quality gate → push, on the embedded
default, with only huggingface_hub's network calls replaced; prune-on-load equals the command line."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_prune
import hf_prune.run.stages
from hf_prune.data import DEFAULT_MODEL_DIR
from hf_prune.run.cli import build_prune_parser, main, prune_settings

#: keeps the tests to seconds: a short LoRA run, a few documents / items per lm-eval task
FAST = ["--lora-steps", "20", "--recover-samples", "16"]


class FakeHub:
    """Stands in for the Hub's HTTP API: records what HfApi would send, and what was in the folder then."""

    def __init__(self, fail_with: Exception | None = None):
        self.fail_with = fail_with
        self.created: list[dict] = []
        self.branches: list[dict] = []
        self.uploads: list[dict] = []

    def install(self, monkeypatch) -> "FakeHub":
        hub = self

        def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None, **kwargs):
            if hub.fail_with is not None:
                raise hub.fail_with
            hub.created.append({"repo_id": repo_id, "private": private, "token": self.token})
            from huggingface_hub.hf_api import RepoUrl

            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_branch(self, repo_id, *, branch, exist_ok=False, **kwargs):
            hub.branches.append({"repo_id": repo_id, "branch": branch})

        def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=None, **kwargs):
            folder = Path(folder_path)
            hub.uploads.append({
                "repo_id": repo_id, "revision": revision, "message": commit_message,
                "files": sorted(p.name for p in folder.iterdir()),
                "card": (folder / "README.md").read_text(),
                "config": json.loads((folder / "config.json").read_text()),
            })
            return f"https://huggingface.co/{repo_id}/commit/0123abc"

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        return self


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_issue_command_prunes_recovers_scores_gates_and_pushes(capsys, monkeypatch, tmp_path):
    """The command of the issue, as a user types it (plus --output), on the embedded default: LoRA lifts the
    held-out word-perplexity retention from 0.875 to 0.920 here, so the 0.9 gate passes and the push goes."""
    hub = FakeHub().install(monkeypatch)
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, "--target", "emp", "--sparsity", "0.3", "--recover", "lora", "--min-retention",
                            "0.9", "--push-to-hub", "me/x", "--output", out)
    assert code == 0, err
    assert "quality gate passed" in stdout and "pushed to me/x" in stdout
    assert "after recovery" in stdout
    assert hub.created == [{"repo_id": "me/x", "private": None, "token": None}] and hub.branches == []
    [upload] = hub.uploads
    assert upload["repo_id"] == "me/x" and upload["revision"] is None
    assert {"model.safetensors", "config.json", "modeling_hf_prune.py", "tokenizer.json", "README.md",
            "allocation.png", "hf_prune_report.json"} <= set(upload["files"])
    assert upload["files"] == sorted(p.name for p in out.iterdir()), "what is pushed is what was written"

    card = ModelCard(upload["card"])
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"pruned", "hf-prune"} <= set(card.data.tags)
    assert card.data.base_model is None, "the embedded default is no Hub id: no base_model link"
    for section in ("## Quality (lm-eval)", "## Recovery", "## Kept per layer", "allocation.png",
                    'from_pretrained("me/x", trust_remote_code=True)', "`target=emp`", "`calibration=builtin`"):
        assert section in card.text, section

    info = upload["config"]["hf_prune"]
    assert info["config"]["recovery"]["method"] == "lora"
    rows = {row["task"]: row for row in info["quality"]["rows"]}
    assert set(rows) == {"hfprune_perplexity", "hfprune_next_sentence"}
    perplexity = rows["hfprune_perplexity"]
    assert perplexity["higher_is_better"] is False
    assert perplexity["retention"] == pytest.approx(perplexity["dense"] / perplexity["pruned"])
    assert perplexity["recovered_retention"] == pytest.approx(perplexity["dense"] / perplexity["recovered"])
    assert info["quality"]["passed"] is True and info["quality"]["min_retention"] == 0.9
    assert perplexity["recovered_retention"] > perplexity["retention"], "recovery raised the retention"
    recovery = info["recovery"]
    assert recovery["perplexity_after"] < recovery["perplexity_before"], "LoRA recovered part of the loss"
    assert recovery["perplexity_dense"] < recovery["perplexity_before"]

    reloaded = AutoModelForCausalLM.from_pretrained(out)  # a plain model: the LoRA is merged
    assert not any("lora" in name for name, _ in reloaded.named_parameters())


def test_private_repo_on_a_branch(capsys, monkeypatch, tmp_path):
    hub = FakeHub().install(monkeypatch)
    code, _, err = run(capsys, "--sparsity", "0.3", "--recover", "lora", *FAST, "--push-to-hub", "me/x", "--revision",
                       "v1", "--private", "--output", tmp_path / "pruned")
    assert code == 0, err
    assert hub.created == [{"repo_id": "me/x", "private": True, "token": None}]
    assert hub.branches == [{"repo_id": "me/x", "branch": "v1"}]
    assert [upload["revision"] for upload in hub.uploads] == ["v1"]


@pytest.mark.parametrize("target", ["uniform", "search"])
def test_a_sparsity_the_selected_units_cannot_hold_is_refused_before_the_model_loads(capsys, monkeypatch, tmp_path,
                                                                                     target):
    """MLP neurons hold 73% of the embedded default's prunable parameters: 90% is refused from the config's shapes,
    before minutes of loading and calibration, in memory and layer by layer."""
    def never(*args, **kwargs):
        raise AssertionError("loaded a model for a run that the config alone refuses")

    monkeypatch.setattr(hf_prune.run.stages, "load_model", never)
    monkeypatch.setattr(hf_prune.run.stages, "load_offloaded", never)
    for layerwise in ([], ["--layerwise"]):
        code, _, err = run(capsys, "--target", target, "--units", "mlp", "--sparsity", "0.9", *layerwise,
                           "--output", tmp_path / "o")
        assert code == 2 and "sparsity 0.9 is more than the selected units hold (--units mlp: 73%" in err
        assert "--units all" in err and not (tmp_path / "o").exists()


def test_a_scoring_flag_without_scoring_is_refused(capsys, tmp_path):
    """--eval-limit alone would do nothing: refused in one line before anything runs."""
    code, _, err = run(capsys, "--eval-limit", "24", "--output", tmp_path / "o")
    assert code == 2 and "--eval-limit applies when the model is scored" in err
    assert not (tmp_path / "o").exists()


def test_below_min_retention_the_model_is_saved_not_pushed_and_the_status_is_3(capsys, monkeypatch, tmp_path):
    hub = FakeHub().install(monkeypatch)
    out = tmp_path / "pruned"
    code, stdout, _ = run(capsys, "--sparsity", "0.5", "--min-retention", "0.999", "--push-to-hub", "me/x",
                          "--eval-tasks", "hfprune_perplexity", "--eval-limit", "12", "--output", out)
    assert code == 3
    assert "quality gate FAILED" in stdout and "not pushed to me/x" in stdout
    assert hub.created == [] and hub.uploads == []
    assert (out / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "**failed**" in card and "| hfprune_perplexity |" in card


@pytest.mark.parametrize("failure", [httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"),
                                     ValueError("Invalid user token.")])
def test_a_failed_upload_is_one_line_exit_2_and_keeps_the_local_copy(capsys, monkeypatch, tmp_path, failure):
    FakeHub(fail_with=failure).install(monkeypatch)
    out = tmp_path / "pruned"
    code, _, err = run(capsys, "--sparsity", "0.3", "--push-to-hub", "me/x", "--output", out)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("hf-prune: error:")]
    assert len(lines) == 1 and "me/x" in lines[0] and f"kept in '{out}'" in lines[0]
    assert "Traceback" not in err
    assert (out / "model.safetensors").is_file()


def test_offline_hub_is_refused_by_huggingface_hub_itself(capsys, monkeypatch, tmp_path):
    """No replacement at all: under HF_HUB_OFFLINE=1 (set for every test) huggingface_hub refuses the call."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = run(capsys, "--sparsity", "0.3", "--push-to-hub", "me/x", "--output", tmp_path / "pruned")
    assert code == 2 and "hf-prune: error: could not" in err and "Traceback" not in err
    assert (tmp_path / "pruned" / "model.safetensors").is_file()


def test_prune_on_load_returns_the_model_the_command_line_writes(capsys, tmp_path):
    out = tmp_path / "cli"
    assert run(capsys, "--target", "emp", "--units", "all", "--sparsity", "0.3", "--seed", "3", "--output", out)[0] == 0
    model = hf_prune.AutoPrunedModelForCausalLM.from_pretrained(
        DEFAULT_MODEL_DIR, pruning_config={"target": "emp", "units": "all", "sparsity": 0.3, "seed": 3})
    assert type(model).__name__ == "PrunedLlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.hf_prune["config"]["target"] == "emp"
    assert model.pruning_report.achieved_sparsity == pytest.approx(0.3, abs=0.02)
    written = load_file(str(out / "model.safetensors"))
    state = model.state_dict()
    assert set(written) <= set(state)
    for name, tensor in written.items():
        assert torch.equal(state[name], tensor), name

    model.save_pretrained(tmp_path / "on-load")  # and the plain loader reads it back
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "on-load")
    assert torch.equal(again.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight)


def test_prune_on_load_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(hf_prune.HfPruneError, match="not pruned yet"):
        hf_prune.AutoPrunedModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR)
    with pytest.raises(hf_prune.HfPruneError, match="does not take revison"):
        hf_prune.AutoPrunedModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, {"sparsity": 0.3}, revison="main")
    with pytest.raises(OSError, match="from_pretrained"):
        hf_prune.AutoPrunedModelForCausalLM()


def test_model_push_to_hub_sends_the_card_rebuilt_from_the_config(monkeypatch, tmp_path):
    model = hf_prune.AutoPrunedModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, pruning_config={"sparsity": 0.3})
    model.save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR).save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    hub = FakeHub().install(monkeypatch)
    url = reloaded.push_to_hub("me/y", private=False)
    assert url.endswith("/commit/0123abc")
    [upload] = hub.uploads
    assert {"modeling_hf_prune.py", "README.md", "allocation.png", "model.safetensors"} <= set(upload["files"])
    assert "tokenizer.json" in upload["files"], "the tokenizer of the model's source is pushed with it"
    assert "## Kept per layer" in upload["card"] and 'from_pretrained("me/y")' in upload["card"]
    assert "hf-prune export-gguf me/y model.gguf" in upload["card"] and "vllm serve me/y" in upload["card"]
    with pytest.raises(TypeError, match="does not take max_shard_size"):
        reloaded.push_to_hub("me/y", max_shard_size="1GB")  # refused, not silently ignored


def test_recovery_flags_without_recover_are_refused(capsys, tmp_path):
    code, _, err = run(capsys, "--lora-rank", "4", "--output", tmp_path / "o")
    assert code == 2 and "--lora-rank applies with --recover lora only" in err
    assert not (tmp_path / "o").exists()


def test_recipes_take_the_recovery_section_nested_or_by_flag_name():
    nested = hf_prune.PruningConfig.from_dict({"recovery": {"method": "lora", "rank": 4}})
    flat = hf_prune.PruningConfig.from_dict({"recover": "lora", "lora_rank": 4})
    assert nested == flat and flat.recovery.rank == 4
    assert hf_prune.PruningConfig.from_dict(flat.to_dict()) == flat


def test_unknown_eval_task_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "--eval-tasks", "no_such_task_xyz", "--output", tmp_path / "o")
    assert code == 2 and "unknown lm-eval task(s): no_such_task_xyz" in err


def test_a_task_whose_data_cannot_load_fails_before_pruning(capsys, tmp_path, monkeypatch):
    """arc_easy's dataset is on the Hub, which is offline here: one line, before any pruning work."""
    import hf_prune.run.stages

    monkeypatch.setattr(hf_prune.run.stages, "make_plan", lambda *args, **kwargs: pytest.fail("planned first"))
    code, _, err = run(capsys, "--eval-tasks", "arc_easy", "--output", tmp_path / "o")
    assert code == 2 and "lm-eval could not load the data of arc_easy" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_lora_that_does_not_help_is_discarded_and_leaves_the_weights_as_they_were():
    from hf_prune.config import RecoveryOptions
    from hf_prune.recovery.lora import recover_with_lora
    from hf_prune.testing import make_tiny_model

    model = make_tiny_model("llama")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    held_out = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(0))
    one_token = torch.full((8, 16), 5)  # text unlike the held-out rows: learning it can only hurt them
    options = RecoveryOptions(method="lora", steps=20, lr=1e-2, batch_size=4, samples=8, eval_rows=4)
    result = recover_with_lora(model, one_token, held_out, options)
    assert not result.kept and result.perplexity_after == pytest.approx(result.perplexity_before)
    assert set(model.state_dict()) == set(before), "no adapter module is left behind"
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())


def test_the_card_links_a_hub_base_model_and_not_a_local_path():
    from hf_prune.io.card import hub_id_or_none, model_card
    from hf_prune.report import PruningReport

    report = PruningReport(config={"target": "uniform", "sparsity": 0.3, "importance": "activation"}, layers=[],
                           params_before=10, params_after=7, prunable_before=10, prunable_after=7,
                           base_model="meta-llama/Llama-3.1-8B")
    card = model_card(report, repo_id="me/x")
    assert card.data.base_model == "meta-llama/Llama-3.1-8B" and "me/x" in card.text
    assert hub_id_or_none("./models/llama") is None and hub_id_or_none("/abs/path") is None
    assert hub_id_or_none("a/b/c") is None and hub_id_or_none("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"


def test_the_commands_the_card_gives_parse():
    """Every ``hf-prune ...`` command a model card tells its reader to run is accepted by hf-prune's own parser
    (the card once kept ``hf-prune eval --tasks`` after the flag became ``--eval-tasks``)."""
    import re
    import shlex

    from hf_prune.io.card import model_card
    from hf_prune.report import PruningReport
    from hf_prune.run.cli import build_eval_parser

    report = PruningReport(config={"target": "uniform", "sparsity": 0.3, "importance": "activation"}, layers=[],
                           params_before=10, params_after=7, prunable_before=10, prunable_after=7)
    commands = re.findall(r"hf-prune (eval [^`\n]*)", model_card(report, repo_id="me/x").text)
    assert commands
    for command in commands:
        build_eval_parser().parse_args(shlex.split(command.replace("<this directory or repo>", "me/x"))[1:])


def test_a_recipe_may_nest_the_sections(tmp_path):
    from hf_prune.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("target: search\nsearch: {search_rows: 3, mlp_levels: 4}\n"
                      "calibration: {calibration: builtin, calibration_samples: 8}\nrecovery: {recover: lora, lora_rank: 4}\n")
    config = hf_prune.PruningConfig.from_dict(load_recipe(recipe))
    assert (config.search.rows, config.search.mlp_levels, config.calibration.samples) == (3, 4, 8)
    assert config.calibration.source == "builtin" and config.recovery.rank == 4
    flags = build_prune_parser().parse_args(["--recipe", str(recipe), "--calibration", "other.jsonl"])
    assert prune_settings(flags)[0].calibration.samples == 8, "a flag overrides one field of a section, not all"
    with pytest.raises(hf_prune.HfPruneError, match="--steps applies to --target hyperflux only"):
        hf_prune.PruningConfig.from_dict({"target": "emp", "steps": 10})
    recipe.write_text("target: search\nsearch: {rows: 3}\n")  # the word of config.json, not of the flag
    with pytest.raises(hf_prune.HfPruneError, match="unknown option 'rows' in section 'search'.*'search_rows'"):
        load_recipe(recipe)


def test_lora_recovery_is_seeded_and_leaves_the_callers_random_state_alone():
    from hf_prune.config import RecoveryOptions
    from hf_prune.recovery.lora import recover_with_lora
    from hf_prune.testing import make_tiny_model

    rows = torch.randint(0, 200, (12, 16), generator=torch.Generator().manual_seed(0))
    options = RecoveryOptions(method="lora", steps=3, batch_size=4, samples=8, eval_rows=4)
    weights = []
    for noise in (1, 2):
        model = make_tiny_model("llama")
        torch.manual_seed(noise)  # whatever ran before recovery
        state = torch.random.get_rng_state()
        recover_with_lora(model, rows[:8], rows[8:], options, seed=7)
        assert torch.equal(torch.random.get_rng_state(), state)
        weights.append(model.model.layers[0].mlp.down_proj.weight.clone())
    assert torch.equal(*weights)
