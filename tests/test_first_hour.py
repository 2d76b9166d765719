"""A new user's first hour, through the real ``hf-prune`` command in a subprocess: help and version that
answer before torch loads, data that ships, the embedded default working with every target and with
``hf-prune eval``, Ctrl-C and saved state, bad files and paths, and no noise on a normal run."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hf_prune
from hf_prune.data import CALIBRATION_FILE, HELDOUT_FILE
from hf_prune.testing import save_tiny_checkpoint, write_calibration_file

from ._subprocess import run_python

HF_PRUNE = str(Path(sys.executable).with_name("hf-prune"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def hf_prune_cmd(*args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([HF_PRUNE, *[str(a) for a in args]], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env or ENV)


def one_line_error(result: subprocess.CompletedProcess, prefix: str = "hf-prune: error:") -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- help, version, speed -------------------------------------------------------------------------

@pytest.mark.parametrize("verb", [[], ["prune"], ["eval"]])
def test_help_of_every_verb_renders(verb):
    result = hf_prune_cmd(*verb, "--help")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "usage:" in result.stdout


def test_help_documents_verbs_defaults_and_tasks():
    main_help = hf_prune_cmd("--help").stdout
    assert "hf-prune [prune] [options]" in main_help and "hf-prune eval" in main_help
    assert "(default: None)" not in main_help, "a default of None says nothing: say what happens"
    calibration = main_help[main_help.index("  --calibration CALIBRATION"):main_help.index("  --calibration-config")]
    assert "builtin" in calibration and "embedded default" in calibration
    eval_help = hf_prune_cmd("eval", "--help").stdout
    assert "(default: None)" not in eval_help
    assert "hfprune_perplexity" in eval_help and "hfprune_next_sentence" in eval_help
    assert "(default: 16)" in eval_help  # --eval-batch-size shows its default
    batch = eval_help[eval_help.index("  --eval-batch-size"):eval_help.index("  --eval-mc-items")]
    assert "lm-eval batch size" in batch


def test_eval_help_lists_the_tasks_evaluate_runs():
    from hf_prune import quality, tasks
    from hf_prune.quality import local_tasks

    assert tasks.LOCAL_TASKS == quality.LOCAL_TASKS
    assert sorted(local_tasks.LOCAL_TASKS) == sorted(p.stem for p in local_tasks.TASKS_DIR.glob("*.yaml"))


def test_version():
    result = hf_prune_cmd("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"hf-prune {hf_prune.__version__}"


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["--sparsty", "0.3"], ["--target", "nope"],
                                  ["eval", "--help"], ["eval", "--bogus"]])
def test_help_version_and_usage_errors_do_not_import_torch(args):
    """They must answer at once; importing torch and transformers alone takes seconds."""
    result = hf_prune_cmd(*args, env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "hf_prune.run.cli" in imported, "the import profile was not captured"
    assert not {"torch", "transformers", "lm_eval", "datasets"} & imported


# -- data that ships and the embedded default ----------------------------------------------------

def test_shipped_samples_come_from_disjoint_splits():
    provenance = json.loads((CALIBRATION_FILE.parent / "provenance.json").read_text())
    assert provenance["samples"]["calibration"]["split"] == "train"
    assert provenance["samples"]["heldout"]["split"] == "test"
    ids = lambda path: {json.loads(line)["id"] for line in path.read_text().splitlines()}  # noqa: E731
    assert ids(CALIBRATION_FILE) and ids(HELDOUT_FILE) and not ids(CALIBRATION_FILE) & ids(HELDOUT_FILE)
    assert CALIBRATION_FILE.stat().st_size + HELDOUT_FILE.stat().st_size < 600_000


def prune_embedded_default(tmp_path, *args) -> tuple[subprocess.CompletedProcess, dict]:
    """``hf-prune`` on the embedded default with no calibration flag; the run must be clean."""
    result = hf_prune_cmd(*args, "--sparsity", "0.3", "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "hf_prune_report.json").read_text())
    assert report["config"]["calibration"]["source"] == "builtin"
    assert abs(report["achieved_sparsity"] - 0.3) < 0.03
    assert "WARNING" not in result.stdout + result.stderr, "defaults must not trigger warnings"
    assert "seq_len" not in result.stderr, "the model's own context length is chosen silently"
    return result, report


@pytest.mark.parametrize("target, units", [("uniform", "mlp"), ("emp", "all")])
def test_one_shot_targets_run_on_the_embedded_default_without_calibration_flags(tmp_path, target, units):
    _, report = prune_embedded_default(tmp_path, "--target", target, "--units", units)
    assert report["calibration_tokens"] > 0, "the default importance read the shipped text"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`importance=activation`" in card and "gate_lr" not in card and "regrowth_steps" not in card


def test_a_data_driven_default_importance():
    from hf_prune import PruningConfig
    from hf_prune.plan.importance import get_importance

    assert get_importance(PruningConfig().importance).requires, "the default importance must read data"


def test_other_models_must_name_their_calibration_text(tmp_path):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    line = one_line_error(hf_prune_cmd("--model", model_dir, "--importance", "activation",
                                       "--output", tmp_path / "o"))
    assert "needs calibration text" in line and "builtin" in line and "--calibration" in line


def test_eval_of_the_embedded_default_works_out_of_the_box(tmp_path):
    result = hf_prune_cmd("eval", "--eval-limit", "4", "--eval-mc-items", "12", cwd=tmp_path)  # not inside a checkout
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"test file: {HELDOUT_FILE}" in result.stdout
    assert "token_perplexity" in result.stdout
    assert "fatal:" not in result.stderr, "lm-eval's git probe must not reach the terminal"


def test_generate_on_the_embedded_default_does_not_warn():
    result = run_python("""
        import hf_prune.run.cli
        from transformers import AutoModelForCausalLM, AutoTokenizer
        path = hf_prune.data.DEFAULT_MODEL_DIR
        model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        model.generate(**tok("The Lord is", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    """)
    assert "max_length" not in result.stderr


# -- Hyperflux defaults, interrupts and state ----------------------------------------------------

def test_hyperflux_defaults_close_gates_on_the_embedded_default(tmp_path):
    """The default steps and gate learning rate close the gates themselves; the projection only trims."""
    _, report = prune_embedded_default(tmp_path, "--target", "hyperflux", "--calibration-samples", "16")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`gate_lr=" in card and "importance" not in card, "uniform gate init used no importance scores"
    density, target = (report["allocation"][k] for k in ("final_density_before_projection", "target_density"))
    assert density < 1.0 - 0.8 * (1.0 - target), "the gates closed most of the budget themselves"
    assert "warning" not in report["allocation"]


def test_hyperflux_says_loudly_when_gates_end_far_from_the_target(tmp_path):
    result = hf_prune_cmd("--target", "hyperflux", "--steps", "20", "--tick-every", "10", "--gate-lr", "1e-6",
                          "--calibration-samples", "8", "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" in result.stdout and "raise --steps or --gate-lr" in result.stderr


def hyperflux_run(model_dir, calibration, output, *extra):
    return [HF_PRUNE, "--model", str(model_dir), "--target", "hyperflux", "--sparsity", "0.35",
            "--calibration", str(calibration), "--calibration-samples", "8", "--seq-len", "16",
            "--steps", "3000", "--tick-every", "10", "--regrowth-steps", "20", "--checkpoint-every", "5",
            "--gate-lr", "0.02", "--output", str(output), *extra]


def test_ctrl_c_saves_the_state_and_prints_the_resume_command_and_rerun_must_choose(tmp_path):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    calibration = write_calibration_file(tmp_path / "calib.jsonl")
    state = tmp_path / "out.hyperflux-state" / "hyperflux_state.json"
    process = subprocess.Popen(hyperflux_run(model_dir, calibration, tmp_path / "out"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 300
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert state.exists(), "the run reached no checkpoint"
    first_saved = json.loads(state.read_text())["step"]
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("hf-prune: interrupted at Hyperflux step") and "resume with: " in last
    step = json.loads(state.read_text())["step"]
    assert f"interrupted at Hyperflux step {step};" in last and step >= first_saved
    assert not (tmp_path / "out").exists()

    rerun = subprocess.run(hyperflux_run(model_dir, calibration, tmp_path / "out"), capture_output=True,
                           text=True, env=ENV, timeout=300)
    line = one_line_error(rerun)
    assert "--resume" in line and "--restart" in line and state.exists(), "the saved state is kept"

    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[0] == "hf-prune" and command[-1] == "--resume"
    resumed = subprocess.run([HF_PRUNE, *command[1:-1], "--steps", "60", "--resume"], capture_output=True,
                             text=True, env=ENV, timeout=300)
    assert resumed.returncode == 2 and "other options" in resumed.stderr, "a changed run is not resumed"
    # resuming the 3000-step run to its end is test_hyperflux_cli's job; here the state is discarded
    restarted = subprocess.run(hyperflux_run(model_dir, calibration, tmp_path / "out", "--restart") + [
        "--steps", "30"], capture_output=True, text=True, env=ENV, timeout=300)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert (tmp_path / "out" / "config.json").exists() and not state.exists()


def test_the_resume_command_continues_a_restarted_run(tmp_path):
    from hf_prune.run.cli import build_prune_parser, prune_settings
    from hf_prune.run.pipeline import interrupted_message, start

    state = tmp_path / "out.hyperflux-state"
    state.mkdir()
    (state / "hyperflux_state.json").write_text(json.dumps({"step": 7, "progress": "Hyperflux step 7"}))
    argv = ["--target", "hyperflux", "--restart", "--output", str(tmp_path / "out")]
    config, options, model = prune_settings(build_prune_parser().parse_args(argv))
    command = interrupted_message(argv, start(model, config, options, None).config).split("resume with: ", 1)[1]
    assert shlex.split(command) == ["hf-prune", "--target", "hyperflux", "--output", str(tmp_path / "out"),
                                    "--resume"]


def test_ctrl_c_outside_gate_training_says_nothing_was_written(monkeypatch, capsys, tmp_path):
    from hf_prune.run import cli, pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "prune_pretrained", interrupted)
    assert cli.main(["--output", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "hf-prune: interrupted; nothing was written"


# -- bad files and paths ----------------------------------------------------------------------------

def test_truncated_weights_are_named_in_one_line(tmp_path):
    model_dir = Path(save_tiny_checkpoint("llama", tmp_path / "model"))
    weights = model_dir / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    for result, prefix in ((hf_prune_cmd("--model", model_dir, "--output", tmp_path / "o"), "hf-prune: error:"),
                           (hf_prune_cmd("eval", "--model", model_dir, "--eval-data", HELDOUT_FILE),
                            "hf-prune eval: error:")):
        line = one_line_error(result, prefix)
        assert str(weights) in line and "corrupt or truncated" in line
    assert not (tmp_path / "o").exists()


def test_empty_calibration_file(tmp_path):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    (tmp_path / "e.txt").write_text("")
    line = one_line_error(hf_prune_cmd("--model", model_dir, "--calibration", tmp_path / "e.txt",
                                       "--output", tmp_path / "o"))
    assert "e.txt" in line and "is empty" in line


def test_unwritable_output_fails_before_the_model_is_loaded(tmp_path):
    line = one_line_error(hf_prune_cmd("--output", "/proc/x", "--verbose"))
    assert "cannot write into '/proc'" in line


def test_suggestions_fit_the_options_in_use(tmp_path):
    line = one_line_error(hf_prune_cmd("--target", "emp", "--units", "all", "--sparsity", "0.95",
                                       "--output", tmp_path / "o"))
    assert "lower --sparsity" in line and "--units all" not in line
    line = one_line_error(hf_prune_cmd("--units", "mlp", "--sparsity", "0.9", "--output", tmp_path / "o"))
    assert "--units all" in line


def test_sparsity_zero_is_refused(tmp_path):
    line = one_line_error(hf_prune_cmd("--sparsity", "0", "--output", tmp_path / "o"))
    assert "removes nothing" in line
    assert not (tmp_path / "o").exists()


def test_plot_title_names_an_importance_only_when_scores_were_used():
    from hf_prune.io.summary import plot_title
    from hf_prune.report import PruningReport

    config = {"target": "hyperflux", "importance": "activation"}
    report = PruningReport(config=config, layers=[], params_before=10, params_after=7, prunable_before=10,
                           prunable_after=7)
    assert plot_title(report) == "hyperflux, achieved sparsity 30.0%"
    report.scored = True
    assert plot_title(report) == "hyperflux, importance activation, achieved sparsity 30.0%"


# -- found by a new user on a fresh clone -------------------------------------------------------------------

def test_output_that_is_not_a_terminal_is_never_hard_wrapped(tmp_path):
    """A narrow terminal width and a long path: every printed line still holds its whole path (a log or a pipe
    must not break a path that a user copies)."""
    output = tmp_path / ("a-rather-long-directory-name-" * 3) / "pruned"
    result = hf_prune_cmd("--sparsity", "0.3", "--output", output, env={**ENV, "COLUMNS": "40"})
    assert result.returncode == 0, result.stderr[-3000:]
    wrote = [line for line in result.stdout.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1 and f"from_pretrained({str(output)!r})" in wrote[0]
    assert any(line.startswith("sparsity: requested 30.00%, achieved") and line.endswith("whole groups)")
               for line in result.stdout.splitlines())


def test_eval_of_a_pruned_model_without_the_corpus_uses_the_shipped_text_and_says_so(tmp_path):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    env = {**ENV, "HF_PRUNE_CORPUS": str(tmp_path / "no-corpus")}
    result = hf_prune_cmd("eval", "--model", model_dir, "--eval-tasks", "hfprune_perplexity", "--eval-limit", "2",
                          cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out text: the sample shipped with hf-prune" in result.stdout and "--eval-data" in result.stdout
    assert f"test file: {HELDOUT_FILE}" in result.stdout


def test_a_typo_in_a_recipe_is_an_error_naming_the_nearest_option(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sparsityy: 0.5\n")
    line = one_line_error(hf_prune_cmd("--recipe", recipe, "--output", tmp_path / "o"))
    assert "unknown option 'sparsityy'" in line and "did you mean 'sparsity'" in line
    assert not (tmp_path / "o").exists()


def test_a_recipe_may_name_the_model_and_the_output(tmp_path):
    model_dir = save_tiny_checkpoint("qwen2", tmp_path / "model")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {model_dir}\noutput: {tmp_path / 'from-recipe'}\nimportance: magnitude\nsparsity: 0.3\n")
    result = hf_prune_cmd("--recipe", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "from-recipe" / "config.json").read_text())
    assert config["model_type"] == "hf_prune_qwen2"


def test_a_result_that_cannot_be_moved_into_place_is_kept_and_named(tmp_path, monkeypatch, capsys):
    """The rename at the very end fails (another user's directory, a mount point): one line, exit 2, the finished
    result kept beside the output, the old output untouched."""
    from hf_prune.run.cli import main

    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("the user's")
    rename = Path.rename

    def refusing(self, target):
        if Path(target) == output and self.name.endswith(".tmp"):  # the finished result, not the old output
            raise PermissionError(13, "Permission denied")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", refusing)
    assert main(["--importance", "magnitude", "--sparsity", "0.3", "--output", str(output), "--overwrite"]) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-prune: error:")]
    assert error.startswith("hf-prune: error: cannot move the result into") and "Permission denied" in error
    kept = Path(error.split("it is complete and kept in ", 1)[1].split("'")[1])
    assert (kept / "config.json").is_file() and kept.parent == tmp_path
    assert (output / "old.txt").read_text() == "the user's"


def test_an_output_in_a_sticky_directory_owned_by_another_user_is_refused_up_front(tmp_path, monkeypatch):
    from hf_prune.errors import OutputDirError
    from hf_prune.io.checkpoint import prepare_output_dir

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "theirs").mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: 54321)  # neither the directory's owner nor the output's
    with pytest.raises(OutputDirError, match="belongs to another user"):
        prepare_output_dir(shared / "theirs", overwrite=True)
    prepare_output_dir(shared / "new", overwrite=True)  # a new directory there is fine
