"""``--layerwise``: a model read from its shards one layer at a time, cut and written shard by shard, gives the
checkpoint the in-memory path gives (every family, removed sublayers, compensation biases, tied heads, bf16
files), and its peak memory stays well below the model's size."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_prune import PruningConfig, prune_pretrained
from hf_prune.adapters import get_adapter
from hf_prune.cut.apply import PruningPlan, apply_pruning
from hf_prune.io.layerwise import LayerByLayer, ShardWriter, load_offloaded
from hf_prune.plan.planner import collect_statistics
from hf_prune.run.cli import main
from hf_prune.testing import make_tiny_model, make_tiny_tokenizer, random_plan, write_calibration_file

from ._subprocess import run_python

#: what differs between two runs of the same pruning: how long calibration (and a search) took
TIMINGS = re.compile(r'"[a-z_]*seconds": [0-9.e-]+|[0-9.]+s\b')


WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


def save_sharded(family: str, directory: Path, dtype=torch.float32, **overrides) -> str:
    """A tiny random checkpoint of ``family`` in several safetensors shards, with a tokenizer."""
    make_tiny_model(family, **overrides).to(dtype).save_pretrained(directory, max_shard_size="40KB")
    make_tiny_tokenizer().save_pretrained(directory)
    assert (directory / "model.safetensors.index.json").is_file()
    return str(directory)


def written_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def assert_same_checkpoint(layerwise: Path, in_memory: Path) -> None:
    expected, got = written_tensors(in_memory), written_tensors(layerwise)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    others = {directory: {str(p.relative_to(directory)) for p in directory.rglob("*")
                          if p.is_file() and not WEIGHT_FILE.fullmatch(p.name)} for directory in (layerwise, in_memory)}
    assert others[layerwise] == others[in_memory]
    for name in others[in_memory]:
        a, b = layerwise / name, in_memory / name
        if name.endswith(".safetensors"):  # the scores
            got, expected = load_file(a), load_file(b)
            assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
        elif not name.endswith(".png"):  # text: equal but for the timings
            assert TIMINGS.sub("", a.read_text()) == TIMINGS.sub("", b.read_text()), name


@pytest.mark.parametrize("compensate, refit_on", [("none", "pruned"), ("bias", "pruned"), ("lstsq", "pruned"), ("obs", "pruned"),
                                                  ("lstsq", "asymmetric")])
def test_layerwise_pipeline_writes_what_the_in_memory_pipeline_writes(family, compensate, refit_on, tmp_path):
    source = save_sharded(family, tmp_path / "dense", dtype=torch.bfloat16)
    calibration = write_calibration_file(tmp_path / "calibration.jsonl")

    def config():
        return PruningConfig.from_dict({"target": "emp", "sparsity": 0.4, "compensate": compensate, "refit_on": refit_on,
                                        "calibration": calibration, "calibration_samples": 6, "seq_len": 32,
                                        "sequential": True})

    model, report = prune_pretrained(source, config(), layerwise=True, output_dir=tmp_path / "layerwise")
    assert model is None
    _, expected = prune_pretrained(source, config(), output_dir=tmp_path / "in_memory")
    assert report.plan == expected.plan and report.params_after == expected.params_after
    assert_same_checkpoint(tmp_path / "layerwise", tmp_path / "in_memory")
    assert len(list((tmp_path / "layerwise").glob("model-*.safetensors"))) > 1  # written shard by shard


@pytest.mark.parametrize("refit_on", ["pruned", "dense"])
def test_layer_by_layer_cut_of_removed_sublayers_and_compensation_equals_the_cut_in_memory(family, refit_on, tmp_path):
    """Whole sublayers removed, bias compensation on kept ones (refit on the cut prefix's activations or the dense
    model's): the same tensors either way."""
    source = save_sharded(family, tmp_path / "dense")
    config = PruningConfig.from_dict({"compensate": "bias", "sparsity": 0.3, "refit_on": refit_on})
    input_ids = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(0))
    model = make_tiny_model(family)
    scopes = get_adapter(model).scopes(model)
    kept = random_plan(model, seed=3)
    kept["layers.0.attention"], kept["layers.1.mlp"] = [], []
    stats = collect_statistics(model, scopes, config, input_ids)
    apply_pruning(model, config, PruningPlan(kept, {}, {}, [], None, stats, input_ids))
    expected = {name: tensor for name, tensor in model.state_dict().items()
                if not (name == "lm_head.weight" and model.config.tie_word_embeddings)}

    offloaded, stored = load_offloaded(source, torch.float32)
    assert offloaded.get_submodule(get_adapter(offloaded).scopes(offloaded)[0].consumer.path).weight.is_meta
    writer = ShardWriter(tmp_path / "shards", max_shard_bytes=30_000)
    report = apply_pruning(offloaded, config, PruningPlan(kept, {}, {}, [], None, stats, input_ids),
                           layer_by_layer=LayerByLayer(offloaded, stored, writer, torch.float32))
    (tmp_path / "out").mkdir()
    writer.close(tmp_path / "out")
    got = written_tensors(tmp_path / "out")
    assert got.keys() == expected.keys()
    if refit_on == "dense":  # refit from the same statistics: the same bits
        assert all(torch.equal(got[name], expected[name]) for name in expected)
    else:  # each walks its own activations: the offloaded model runs sdpa attention, the tiny one eager
        for name, tensor in expected.items():
            torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert all(p.is_meta for p in offloaded.parameters())  # nothing of the model is left in memory
    assert report.params_after == sum(t.numel() for t in got.values())


def test_shard_writer_writes_transformers_layout(tmp_path):
    writer = ShardWriter(tmp_path / "parts", max_shard_bytes=100)
    for index in range(3):
        writer.add({f"layer.{index}.weight": torch.full((20,), float(index))})  # 80 bytes each: one shard per layer
    writer.close(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {f"layer.{i}.weight": f"model-0000{i + 1}-of-00003.safetensors" for i in range(3)}
    assert index["metadata"]["total_size"] == 240 and not (tmp_path / "parts").exists()
    single = ShardWriter(tmp_path / "one" / "parts", max_shard_bytes=10**6)
    single.add({"a": torch.ones(3)})
    single.close(tmp_path / "one")
    assert load_file(tmp_path / "one" / "model.safetensors")["a"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("flags, message", [
    (["--target", "hyperflux"], "trains gates through the whole model"),
    (["--importance", "taylor"], "backward pass"),
    (["--eval-tasks", "hfprune_perplexity"], "cannot score or recover"),
    (["--device-map", "auto"], "drop --device-map"),
])
def test_what_layerwise_cannot_do_is_refused_in_one_line(flags, message, tmp_path, capsys):
    source = save_sharded("llama", tmp_path / "dense")
    capsys.readouterr()
    assert main(["--model", source, "--layerwise", "--output", str(tmp_path / "out"), *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()


MEMORY_PROBE = """
import json
import datasets, torch  # every library the run imports: the baseline holds their code
from hf_prune import PruningConfig, prune_pretrained

def status_mb(field):  # VmHWM, not getrusage: ru_maxrss keeps the parent's peak across fork and exec
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) / 1024

baseline = status_mb("VmRSS")
config = PruningConfig.from_dict({{"target": "emp", "sparsity": 0.3, "calibration": {calibration!r},
                                  "calibration_samples": 4, "seq_len": 64, "sequential": True}})
prune_pretrained({source!r}, config, output_dir={output!r}, layerwise={layerwise})
print(json.dumps({{"baseline": baseline, "peak": status_mb("VmHWM")}}))
"""


def test_layerwise_peak_memory_is_well_below_the_model_and_the_result_equals_the_in_memory_one(tmp_path):
    """A 1 GB random Llama in 100 MB shards: pruning it layer by layer adds less than a third of its size to
    the process (a layer is 1/16 of it), and writes the checkpoint the in-memory path writes."""
    shapes = dict(vocab_size=8192, hidden_size=1024, intermediate_size=4096, num_hidden_layers=16,
                  num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=256)
    source = tmp_path / "dense"
    make_tiny_model("llama", **shapes).save_pretrained(source, max_shard_size="100MB")
    make_tiny_tokenizer().save_pretrained(source)
    model_mb = sum(p.stat().st_size for p in source.glob("*.safetensors")) / 2**20
    calibration = write_calibration_file(tmp_path / "calibration.jsonl")
    measured = {}
    for layerwise in (True, False):
        output = tmp_path / ("layerwise" if layerwise else "in_memory")
        code = MEMORY_PROBE.format(source=str(source), output=str(output), layerwise=layerwise,
                                   calibration=calibration)
        measured[layerwise] = json.loads(run_python(code, timeout=600).stdout.strip().splitlines()[-1])
    added = {mode: values["peak"] - values["baseline"] for mode, values in measured.items()}
    print(f"model {model_mb:.0f} MB; peak RSS added: layerwise {added[True]:.0f} MB, in memory {added[False]:.0f} MB")
    assert added[True] < model_mb / 3
    assert added[False] > model_mb  # the comparison measures what it claims to
    assert_same_checkpoint(tmp_path / "layerwise", tmp_path / "in_memory")


def test_layerwise_from_the_command_line_writes_then_pushes_what_it_wrote(tmp_path, capsys, monkeypatch):
    from .test_pipeline import FakeHub

    hub = FakeHub().install(monkeypatch)
    source = save_sharded("qwen2", tmp_path / "dense")
    out = tmp_path / "out"
    assert main(["--model", source, "--layerwise", "--target", "emp", "--sparsity", "0.3", "--calibration",
                 write_calibration_file(tmp_path / "c.jsonl"), "--calibration-samples", "4", "--seq-len", "32",
                 "--push-to-hub", "me/x", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "layer by layer" in stdout and "pushed to me/x" in stdout
    assert hub.uploads[0]["files"] == sorted(p.name for p in out.iterdir())
    assert hub.uploads[0]["config"]["hf_prune"]["config"]["calibration"]["sequential"] is True


def test_a_failure_during_the_cut_leaves_nothing_behind(tmp_path, monkeypatch):
    source = save_sharded("llama", tmp_path / "dense")
    calls = []

    def failing_add(self, tensors):
        calls.append(tensors)
        if len(calls) == 2:
            raise RuntimeError("disk full")

    monkeypatch.setattr(ShardWriter, "add", failing_add)
    with pytest.raises(RuntimeError, match="disk full"):
        prune_pretrained(source, PruningConfig.from_dict({"importance": "magnitude", "sparsity": 0.3}),
                         layerwise=True, output_dir=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]  # no output, no staging directory


def test_a_checkpoint_without_safetensors_is_refused_in_one_line(tmp_path, capsys):
    source = tmp_path / "dense"
    model = make_tiny_model("llama")
    model.save_pretrained(source)
    (source / "model.safetensors").unlink()
    torch.save(model.state_dict(), source / "pytorch_model.bin")  # an old pickle checkpoint
    capsys.readouterr()
    assert main(["--model", str(source), "--layerwise", "--importance", "magnitude",
                 "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "safetensors" in error and len(error.splitlines()) == 1


def test_the_measured_search_layer_by_layer_writes_what_it_writes_in_memory(tmp_path):
    source = save_sharded("mistral", tmp_path / "dense")

    def config():
        return PruningConfig.from_dict({"target": "search", "units": "all", "sparsity": 0.35, "sequential": True,
                                        "calibration": write_calibration_file(tmp_path / "c.jsonl"),
                                        "calibration_samples": 6, "seq_len": 32, "search_rows": 2})

    _, report = prune_pretrained(source, config(), layerwise=True, output_dir=tmp_path / "layerwise")
    _, expected = prune_pretrained(source, config(), output_dir=tmp_path / "in_memory")
    assert report.plan == expected.plan
    assert_same_checkpoint(tmp_path / "layerwise", tmp_path / "in_memory")


def test_a_truncated_shard_is_named_in_one_line_before_anything_runs(tmp_path, capsys):
    import os

    source = Path(save_sharded("llama", tmp_path / "dense"))
    shard = sorted(source.glob("model-*.safetensors"))[-1]
    os.truncate(shard, shard.stat().st_size // 2)
    capsys.readouterr()
    assert main(["--model", str(source), "--layerwise", "--importance", "magnitude",
                 "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert str(shard) in error and "corrupt or truncated" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_search_with_least_squares_runs_layer_by_layer_and_writes_what_the_sequential_search_writes(tmp_path):
    """``--layerwise --target search --compensate lstsq`` (refused until the sweep gathered its own statistics): the
    candidates' least squares from one layer's statistics at a time, the cut refit on the pruned activations, and
    the checkpoint the same search writes with the model in memory."""
    source = save_sharded("llama", tmp_path / "dense", dtype=torch.bfloat16)
    calibration = write_calibration_file(tmp_path / "calibration.jsonl")

    def config():
        return PruningConfig.from_dict({"target": "search", "sparsity": 0.35, "compensate": "lstsq", "units": "all",
                                        "calibration": calibration, "calibration_samples": 6, "seq_len": 32,
                                        "search_rows": 2, "mlp_levels": 4, "refine_rounds": 1, "sequential": True})

    _, report = prune_pretrained(source, config(), layerwise=True, output_dir=tmp_path / "layerwise")
    _, expected = prune_pretrained(source, config(), output_dir=tmp_path / "in_memory")
    assert report.plan == expected.plan and report.refit["layer_passes"] > 0
    assert report.allocation["search_kl"] == pytest.approx(expected.allocation["search_kl"], rel=1e-6)
    assert_same_checkpoint(tmp_path / "layerwise", tmp_path / "in_memory")
