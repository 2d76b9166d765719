"""``--recover distill``: the packed, streamed text (held-out rows never trained on), the loss against the dense
teacher, and a training run that lowers the held-out KL and resumes after an interruption exactly."""

import copy
import json
import random
import string

import pytest
import torch

from hf_prune.corpus import TextSource
from hf_prune.recovery import distill
from hf_prune.recovery.distill import DistillationSettings, held_out_measures, train_with_teacher
from hf_prune.recovery.losses import LossWeights, kl_to_teacher
from hf_prune.calibration.stream import PackedTokenStream
from hf_prune.testing import make_tiny_model, make_tiny_tokenizer, write_calibration_file


def random_documents(count: int, seed: int = 0) -> list[str]:
    """Documents of random words: no run of 8 tokens of one recurs in another."""
    rng = random.Random(seed)
    word = lambda: "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7)))  # noqa: E731
    return [" ".join(word() for _ in range(30)) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer(text=" ".join(random_documents(60)))


@pytest.fixture()
def text(tmp_path):
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": document}) + "\n" for document in random_documents(60)))
    return TextSource(str(path))


def test_rows_are_full_and_the_held_out_documents_are_never_trained_on(tokenizer, text):
    stream = PackedTokenStream(text, tokenizer, seq_len=16, held_out=3, seed=0)
    held_out = stream.held_out()
    assert held_out.shape == (3, 16)
    training = []
    for row in stream.rows():
        training.append(row)
        if len(training) == 400:  # more than one pass over the text
            break
    assert all(row.shape == (16,) for row in training)
    held = {tuple(row.tolist()) for row in held_out}
    assert not held & {tuple(row.tolist()) for row in training}
    # no training row shares a window of 8 tokens with the held-out rows' documents
    windows = {tuple(row[i:i + 8].tolist()) for row in held_out for i in range(9)}
    assert not any(tuple(row[i:i + 8].tolist()) in windows for row in training for i in range(9))


def test_the_stream_is_the_same_for_the_same_seed(tokenizer, text):
    first = PackedTokenStream(text, tokenizer, seq_len=16, held_out=2, seed=1)
    second = PackedTokenStream(text, tokenizer, seq_len=16, held_out=2, seed=1)
    other = PackedTokenStream(text, tokenizer, seq_len=16, held_out=2, seed=2)
    take = lambda stream: torch.stack([row for _, row in zip(range(20), stream.rows())])  # noqa: E731
    assert torch.equal(first.held_out(), second.held_out()) and torch.equal(take(first), take(second))
    assert not torch.equal(take(first), take(other))


def test_too_little_text_for_the_held_out_rows_is_one_line(tokenizer, tmp_path):
    from hf_prune.errors import ConfigError

    with pytest.raises(ConfigError, match="too short to hold out"):
        PackedTokenStream(TextSource(write_calibration_file(tmp_path / "t.jsonl", documents=2)), tokenizer,
                          seq_len=64, held_out=50, seed=0)


def test_kl_is_zero_for_the_teacher_itself_and_chunks_add_up(monkeypatch):
    logits = torch.randn(2, 7, 11)
    assert float(kl_to_teacher(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 7, 11)
    whole = kl_to_teacher(other, logits, temperature=2.0)
    monkeypatch.setattr("hf_prune.recovery.losses.TOKENS_PER_CHUNK", 3)
    assert float(kl_to_teacher(other, logits, temperature=2.0)) == pytest.approx(float(whole), rel=1e-5)


def student_and_teacher():
    teacher = make_tiny_model("llama", num_hidden_layers=2)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if "mlp" in name:
                parameter.mul_(0.5)
    return student, teacher


@pytest.mark.parametrize("params", ["full", "lora"])
def test_distillation_lowers_the_held_out_kl_to_the_teacher(tokenizer, text, tmp_path, params):
    student, teacher = student_and_teacher()
    stream = PackedTokenStream(text, tokenizer, seq_len=16, held_out=4, seed=0)
    before = held_out_measures(student, teacher, stream.held_out(), 4)
    settings = DistillationSettings(tokens=30 * 4 * 16, batch_size=4, lr=3e-3 if params == "full" else 2e-2,
                                    params=params)
    result = train_with_teacher(student, teacher, stream, settings, seed=0, scratch_dir=str(tmp_path))
    assert result["before"]["kl"] == pytest.approx(before["kl"])
    assert result["after"]["kl"] < 0.85 * before["kl"]
    assert result["steps"] == 30 and result["tokens"] == 30 * 4 * 16
    assert not any(type(m).__name__.startswith("Lora") for m in student.modules())  # merged: a plain model again
    assert held_out_measures(student, teacher, stream.held_out(), 4)["kl"] == pytest.approx(result["after"]["kl"],
                                                                                             rel=1e-4)


def test_the_lm_loss_alone_needs_no_teacher(tokenizer, text, tmp_path):
    student, _ = student_and_teacher()
    stream = PackedTokenStream(text, tokenizer, seq_len=16, held_out=4, seed=0)
    settings = DistillationSettings(tokens=10 * 4 * 16, batch_size=4, lr=3e-3, weights=LossWeights(kl=0.0, lm=1.0))
    result = train_with_teacher(student, None, stream, settings, seed=0, scratch_dir=str(tmp_path))
    assert result["after"]["perplexity"] < result["before"]["perplexity"] and "kl" not in result["after"]


def test_an_interrupted_run_resumes_to_the_same_weights(tokenizer, text, tmp_path, monkeypatch):
    """Ctrl-C after step 6 of 12 saves a checkpoint and stops; --resume ends where an uninterrupted run ends."""
    settings = dict(tokens=12 * 2 * 16, batch_size=2, lr=3e-3)
    straight, teacher = student_and_teacher()
    stream = lambda: PackedTokenStream(text, tokenizer, seq_len=16, held_out=2, seed=0)  # noqa: E731
    train_with_teacher(straight, teacher, stream(), DistillationSettings(**settings), seed=0,
                       scratch_dir=str(tmp_path / "a"))

    interrupted, _ = student_and_teacher()
    state = str(tmp_path / "state")
    original = distill._StopOnRequest.on_step_end

    def ctrl_c_at_step_6(self, args, state_, control, **kwargs):
        self.request.requested = self.request.requested or state_.global_step == 6
        return original(self, args, state_, control, **kwargs)

    monkeypatch.setattr(distill._StopOnRequest, "on_step_end", ctrl_c_at_step_6)
    with pytest.raises(KeyboardInterrupt, match="after step 6"):
        train_with_teacher(interrupted, teacher, stream(), DistillationSettings(**settings, state_dir=state),
                           seed=0, scratch_dir=str(tmp_path / "b"))
    monkeypatch.setattr(distill._StopOnRequest, "on_step_end", original)
    resumed, _ = student_and_teacher()
    train_with_teacher(resumed, teacher, stream(), DistillationSettings(**settings, state_dir=state, resume=True),
                       seed=0, scratch_dir=str(tmp_path / "c"))
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name


# -- the command ------------------------------------------------------------------------------------------------
from hf_prune.run.cli import main  # noqa: E402

#: the issue's command on the embedded default, with a budget of seconds
COMMAND = ["--target", "search", "--compensate", "lstsq", "--sparsity", "0.5", "--recover", "distill",
           "--recover-tokens", "6144", "--recover-batch-size", "2"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_command_distils_and_the_card_shows_dense_pruned_and_recovered(capsys, tmp_path):
    code, out, err = run(capsys, *COMMAND, "--output", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "hf_prune_report.json").read_text())["recovery"]
    assert report["method"] == "distill" and report["train_tokens"] == 6144
    assert report["kl_after"] < report["kl_before"]
    assert report["perplexity_dense"] < report["perplexity_before"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Distilled from the dense model" in card and "recovery_curve.png" in card
    assert (tmp_path / "out" / "recovery_curve.png").stat().st_size > 0
    assert not (tmp_path / "out.search-state").exists()  # finished: no state left behind


@pytest.mark.parametrize("flags, message", [
    (["--recover-tokens", "100"], "--recover-tokens applies with --recover distill only"),
    (["--recover", "distill", "--lora-steps", "5"], "--lora-steps applies with --recover lora only"),
    (["--recover", "distill", "--lora-rank", "4"], "--lora-rank applies to a LoRA only; add --recover-params lora"),
    (["--recover", "distill", "--distill-kl-weight", "0"], "needs a loss"),
    (["--recover", "distill", "--teacher-bits", "3"], "--teacher-bits must be 4 or 8"),
])
def test_distillation_flags_that_cannot_work_are_one_line(capsys, tmp_path, flags, message):
    code, _, err = run(capsys, *flags, "--output", tmp_path / "o")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_an_unknown_student_is_refused_by_the_config_too():
    from hf_prune.config import RecoveryOptions
    from hf_prune.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown --recover-params 'half'; choose one of: full, lora"):
        RecoveryOptions(method="distill", params="half").validate()


def test_ctrl_c_during_distillation_saves_and_resume_gives_the_same_model(capsys, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    assert run(capsys, *COMMAND, "--output", tmp_path / "straight")[0] == 0
    original = distill._StopOnRequest.on_step_end

    def ctrl_c_at_step_2(self, args, state, control, **kwargs):
        self.request.requested = self.request.requested or state.global_step == 2
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(distill._StopOnRequest, "on_step_end", ctrl_c_at_step_2)
    code, _, err = run(capsys, *COMMAND, "--output", tmp_path / "cut")
    assert code == 130 and "interrupted at recovery step 2 of 12" in err and "--resume" in err
    assert not (tmp_path / "cut").exists()
    monkeypatch.setattr(distill._StopOnRequest, "on_step_end", original)
    code, _, err = run(capsys, *COMMAND, "--output", tmp_path / "cut")
    assert code == 2 and "pass --resume to continue it" in err
    assert run(capsys, *COMMAND, "--output", tmp_path / "cut", "--resume")[0] == 0
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_two_processes_distil_as_one_with_the_same_rows_per_step(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) and 2 rows each per step trains on the same rows as one
    process with 4 (accelerate hands each process its share of the step's rows), so the weights agree."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from hf_prune.testing import save_tiny_checkpoint
    from tests._subprocess import HF_PRUNE_ON_TWO_PROCESSES

    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    calibration = write_calibration_file(tmp_path / "calib.jsonl", documents=80)
    common = ["--model", model_dir, "--target", "emp", "--sparsity", "0.3", "--calibration", calibration,
              "--calibration-samples", "8", "--seq-len", "32", "--recover", "distill", "--recover-tokens",
              str(6 * 4 * 32), "--recover-eval-rows", "4", "--distill-lr", "1e-3"]
    single = subprocess.run([sys.executable, "-m", "hf_prune", *common, "--recover-batch-size", "4", "--output",
                             str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run([*HF_PRUNE_ON_TWO_PROCESSES, *common, "--recover-batch-size", "2", "--output",
                             str(tmp_path / "two")], capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    reports = [json.loads((tmp_path / name / "hf_prune_report.json").read_text())["recovery"] for name in ("one", "two")]
    assert reports[0]["steps"] == reports[1]["steps"] == 6 and reports[0]["train_tokens"] == reports[1]["train_tokens"]
    assert reports[1]["kl_after"] < reports[1]["kl_before"]
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-5)


def test_a_teacher_held_in_8_bits_still_teaches(capsys, tmp_path):
    """--teacher-bits 8 reloads the dense model through bitsandbytes (its CPU backend here) as the teacher."""
    from hf_prune.testing import save_tiny_checkpoint

    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    calibration = write_calibration_file(tmp_path / "calib.jsonl", documents=80)
    code, out, err = run(capsys, "--model", model_dir, "--target", "emp", "--sparsity", "0.3", "--calibration",
                         calibration, "--calibration-samples", "8", "--seq-len", "32", "--recover", "distill",
                         "--recover-tokens", str(20 * 4 * 32), "--recover-eval-rows", "4", "--distill-lr", "3e-3",
                         "--teacher-bits", "8", "--output", tmp_path / "out")
    assert code == 0, err
    assert "loading the dense teacher" in out and "in 8 bits" in out
    report = json.loads((tmp_path / "out" / "hf_prune_report.json").read_text())["recovery"]
    assert report["kl_after"] < report["kl_before"]


def test_the_hidden_state_term_alone_pulls_the_last_hidden_states_together(tokenizer, text, tmp_path):
    from hf_prune.recovery.losses import hidden_state_loss

    student, teacher = student_and_teacher()
    stream = PackedTokenStream(text, tokenizer, seq_len=16, held_out=4, seed=0)
    rows = stream.held_out()

    def gap() -> float:
        with torch.no_grad():
            return float(hidden_state_loss(student(rows, output_hidden_states=True).hidden_states[-1],
                                           teacher(rows, output_hidden_states=True).hidden_states[-1]))

    before = gap()
    settings = DistillationSettings(tokens=20 * 4 * 16, batch_size=4, lr=3e-3, weights=LossWeights(kl=0.0, hidden=1.0))
    train_with_teacher(student, teacher, stream, settings, seed=0, scratch_dir=str(tmp_path))
    assert gap() < 0.8 * before


def test_a_4_bit_teacher_bitsandbytes_cannot_run_here_is_one_line_before_training(capsys, tmp_path):
    """bitsandbytes' CPU 4-bit kernel cannot run the embedded default (a 344-wide MLP): said before training."""
    code, _, err = run(capsys, "--sparsity", "0.3", "--recover", "distill", "--recover-tokens", "2048",
                       "--teacher-bits", "4", "--output", tmp_path / "o")
    if code == 0:
        pytest.skip("this machine's bitsandbytes runs the default model in 4 bits")
    assert code == 2 and "--teacher-bits 4: bitsandbytes cannot run this model quantized here" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_the_quality_gate_scores_the_distilled_model(capsys, tmp_path):
    """--min-retention after --recover distill: dense, cut and recovered are scored with lm-eval, the gate judges the
    recovered one, and the card's quality table and recovery section both come out."""
    code, out, err = run(capsys, *COMMAND, "--min-retention", "0.5", "--eval-limit", "8", "--output", tmp_path / "out")
    assert code == 0, err
    assert "quality gate passed" in out and "after recovery" in out
    info = json.loads((tmp_path / "out" / "config.json").read_text())["hf_prune"]
    rows = {row["task"]: row for row in info["quality"]["rows"]}
    assert all(row.get("recovered") is not None for row in rows.values())
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Quality (lm-eval)" in card and "Distilled from the dense model" in card


def test_a_model_passed_loaded_is_its_own_teacher_copied_before_the_cut(tmp_path):
    """prune_pretrained(model, ...) has no source to load the teacher from: the dense model is copied before the cut,
    and the distillation lowers the KL to it."""
    import hf_prune
    from hf_prune.config import RecoveryOptions

    model = make_tiny_model("llama", num_hidden_layers=2)
    tokenizer = make_tiny_tokenizer()
    calibration = write_calibration_file(tmp_path / "calib.jsonl", documents=80)
    config = hf_prune.PruningConfig(target="emp", sparsity=0.3, calibration={"source": calibration, "samples": 8,
                                                                            "seq_len": 32},
                                    recovery=RecoveryOptions(method="distill", tokens=20 * 4 * 32, eval_rows=4,
                                                             distill_lr=3e-3))
    pruned, report = hf_prune.prune_pretrained(model, config, tokenizer=tokenizer)
    assert pruned is model and report.recovery["kl_after"] < report.recovery["kl_before"]
    assert sum(p.numel() for p in model.parameters()) == report.params_after


def test_a_quantized_teacher_without_bitsandbytes_is_refused_before_loading(capsys, tmp_path, monkeypatch):
    import importlib.util

    import hf_prune.run.stages

    monkeypatch.setattr(hf_prune.run.stages, "load_model", lambda *a, **k: pytest.fail("loaded first"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    code, _, err = run(capsys, *COMMAND, "--teacher-bits", "8", "--output", tmp_path / "o")
    assert code == 2 and "--teacher-bits 8 needs bitsandbytes: pip install 'hf-prune[bnb]'" in err
    assert not (tmp_path / "o").exists()


def test_the_card_names_the_loss_that_was_trained_on():
    from hf_prune.io.card import _distillation_section

    recovery = {"data": "t", "train_tokens": 10, "steps": 1, "eval_rows": 2, "perplexity_dense": 1.0,
                "perplexity_before": 2.0, "perplexity_after": 1.5}
    hidden_only = _distillation_section(recovery, {"kl_weight": 0.0, "hidden_weight": 1.0})
    assert "(the last hidden states' relative squared error)" in hidden_only
    mixed = _distillation_section(recovery, {"kl_weight": 1.0, "lm_weight": 0.5, "temperature": 2.0})
    assert "(KL divergence of the next-token distributions (temperature 2.0) + 0.5 x the language-modelling loss)" in mixed
