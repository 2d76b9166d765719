"""Torch-Pruning, run as itself, as a baseline on SmolLM2-135M (issue 10).

Torch-Pruning's LLM recipe is ``examples/LLMs/prune_llm.py`` of github:VainF/Torch-Pruning (read at
commit e80127d, "v1.6.1"). Its pruning part is reproduced here line for line (``recipe_pruner`` and
``recipe_update_config``): ``BasePruner`` with ``GroupMagnitudeImportance(p=2, group_reduction='mean')``,
local (per-group) pruning, one ``pruning_ratio`` for the hidden size (the residual stream, so the
embedding too), the MLP width and the attention heads (``head_pruning_ratio = pruning_ratio``,
``prune_num_heads=True``, ``prune_head_dims=False``), ``num_heads`` given for q/k/v, ``round_to=4``,
``lm_head`` ignored, example input ``"Hello world."`` and ``output_transform=lambda x: x.logits``.
The recipe is data-free: its importance is weight magnitude and its calibration block
(``ActivationImportance``) is commented out, so no calibration text is read here either.

Deviations, none of which changes what is pruned: float32 on CPU instead of float16 with
``device_map="auto"``; the example input is tokenized with the ``tokenizers`` library from the
checkpoint's ``tokenizer.json`` (the recipe's ``use_fast=False`` slow tokenizer has no files here);
no Wikitext-2 evaluation (nothing from the Hub): the pruned model is saved and evaluated in the
project's main venv on the same fixed windows as ``eval/compare.py``.

Sub-commands (see ``eval/torch_pruning/README.md`` for the order):

* ``timeout-check`` -- build the recipe's pruner (its dependency graph) in a subprocess under a hard
  timeout; record whether it finished, how long it took, and where it was when killed.
* ``bisect`` -- for each transformers version, install it into ``eval/torch_pruning/.venv`` and run
  ``timeout-check`` there; record what worked and the first line of each failure.
* ``prune`` -- (TP venv) for each target share of prunable (attention + MLP) parameters removed,
  bisect the recipe's ``pruning_ratio`` so that the achieved share is closest, prune, save with
  ``save_pretrained`` (safetensors) under ``/tmp/tp_models/``.
* ``evaluate`` -- (main venv) ``hf_prune.quality.paired_comparison`` of each saved model against the
  dense one on ``fixed_token_set(tok, test.jsonl, num_windows=32, seq_len=256, seed=0)``, then write
  ``eval/results/torch_pruning_smollm2.{json,md}``.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVAL_DIR = HERE.parent
REPO = EVAL_DIR.parent
RESULTS_DIR = EVAL_DIR / "results"
RECORDS_DIR = HERE / "records"
MODEL_DIR = EVAL_DIR / "models" / "smollm2-135m"
TP_VENV_PY = HERE / ".venv" / "bin" / "python"
TP_ONLY = HERE / ".venv" / "tp_only"  # torch-pruning alone, for the main venv's timeout check
TEST_FILE = Path("/work/main/data/corpus/test.jsonl")
OUT_ROOT = Path("/tmp/tp_models")
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def versions() -> dict:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "torch-pruning", "tokenizers", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            out[pkg] = None
    return out


# ------------------------------------------------------------------------------------------------
# Loading the checkpoint in whichever transformers is installed
# ------------------------------------------------------------------------------------------------


def compatible_checkpoint(src: Path) -> Path:
    """The checkpoint as this transformers reads it. transformers >= 5 reads it as is; a 4.x one gets a
    converted copy under /tmp (``torch_dtype`` beside ``dtype``, ``rope_theta`` / ``rope_scaling``
    from ``rope_parameters`` -- without it 4.x would silently use rope_theta 10000); weights and
    tokenizer files are symlinked, never copied or edited."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return src
    dst = Path(f"/tmp/tp_smollm2_tf{transformers.__version__}")
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json" and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    else:
        cfg["rope_scaling"] = None
    cfg["torch_dtype"] = cfg.get("dtype", "float32")
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def load_model(src: Path):
    import torch
    from transformers import AutoModelForCausalLM

    path = compatible_checkpoint(src)
    model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32)
    model.eval()
    return model


def example_inputs(src: Path):
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    text = "Hello world."  # the recipe's example input
    return torch.tensor(tok.encode(text, add_special_tokens=True).ids).unsqueeze(0)


# ------------------------------------------------------------------------------------------------
# Torch-Pruning's LLM recipe (examples/LLMs/prune_llm.py, main(), "Pruning" block)
# ------------------------------------------------------------------------------------------------


def recipe_pruner(model, inputs, pruning_ratio: float):
    import torch_pruning as tp

    num_heads = {}
    out_channel_groups = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            if hasattr(m, "q_proj"):
                num_heads[m.q_proj] = model.config.num_attention_heads
                num_heads[m.k_proj] = model.config.num_key_value_heads
                num_heads[m.v_proj] = model.config.num_key_value_heads
            elif hasattr(m, "qkv_proj"):
                num_heads[m.qkv_proj] = model.config.num_attention_heads
        if name.endswith("mlp"):
            if hasattr(m, "gate_up_proj"):
                out_channel_groups[m.gate_up_proj] = 2
    head_pruning_ratio = pruning_ratio
    hidden_size_pruning_ratio = pruning_ratio
    importance = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")
    return tp.pruner.BasePruner(
        model,
        example_inputs=inputs,
        importance=importance,
        global_pruning=False,
        output_transform=lambda x: x.logits,
        pruning_ratio=hidden_size_pruning_ratio,
        ignored_layers=[model.lm_head],
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,  # we do not prune head dims so that we don't need to prune the ROPE
        head_pruning_ratio=head_pruning_ratio,
        out_channel_groups=out_channel_groups,
        round_to=4,
    )


def recipe_update_config(model) -> None:
    """The recipe's "Update model attributes" block, verbatim in effect."""
    _is_gqa = model.config.num_attention_heads != model.config.num_key_value_heads
    seperate_qkv = any(hasattr(m, "q_proj") for n, m in model.named_modules() if n.endswith("self_attn"))
    model.config.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            if seperate_qkv:
                m.hidden_size = m.q_proj.out_features
            else:
                m.hidden_size = m.qkv_proj.out_features // 3
            m.num_heads = m.hidden_size // m.head_dim
            model.config.num_attention_heads = m.num_heads
            if not _is_gqa:
                m.num_key_value_heads = m.num_heads
                model.config.num_key_value_heads = m.num_heads
            if hasattr(m, "num_key_value_groups"):
                m.num_key_value_groups = m.num_heads // model.config.num_key_value_heads
        elif name.endswith("mlp"):
            if hasattr(m, "gate_proj"):
                m.hidden_size = m.gate_proj.in_features
                model.config.intermediate_size = m.gate_proj.out_features
            elif hasattr(m, "gate_up_proj"):
                m.hidden_size = m.gate_up_proj.in_features
                model.config.intermediate_size = m.gate_up_proj.out_features // 2
            else:
                raise ValueError("Unknown mlp layer")
    if not _is_gqa:
        model.config.num_key_value_heads = model.config.num_attention_heads


# ------------------------------------------------------------------------------------------------
# Parameter accounting (same definition as compare.py: attention + MLP projections)
# ------------------------------------------------------------------------------------------------


def prunable_params(model) -> int:
    n = 0
    for name, m in model.named_modules():
        if name.rsplit(".", 1)[-1] in PROJ and hasattr(m, "weight"):
            n += m.weight.numel() + (m.bias.numel() if getattr(m, "bias", None) is not None else 0)
    return n


def distinct_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def shapes(model) -> dict:
    layers = model.model.layers
    per_layer = []
    for layer in layers:
        a, f = layer.self_attn, layer.mlp
        per_layer.append({
            "q_heads": a.q_proj.out_features // 64, "kv_heads": a.k_proj.out_features // 64,
            "hidden": a.q_proj.in_features, "intermediate": f.gate_proj.out_features,
        })
    uniform = all(p == per_layer[0] for p in per_layer)
    return {"uniform_across_layers": uniform, "layer0": per_layer[0],
            "per_layer": None if uniform else per_layer,
            "embedding": list(model.model.embed_tokens.weight.shape),
            "lm_head_tied": model.lm_head.weight is model.model.embed_tokens.weight}


# ------------------------------------------------------------------------------------------------
# timeout-check: build the recipe's dependency graph under a hard timeout
# ------------------------------------------------------------------------------------------------


def cmd_graph_worker(args) -> None:
    """Runs inside the subprocess. Dumps all stacks to stderr shortly before the parent's timeout."""
    import torch

    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(max(1.0, args.dump_after), exit=False)
    t0 = time.perf_counter()
    model = load_model(MODEL_DIR)
    t_load = time.perf_counter() - t0
    inputs = example_inputs(MODEL_DIR)
    print(json.dumps({"event": "loaded", "load_s": t_load}), flush=True)
    t1 = time.perf_counter()
    pruner = recipe_pruner(model, inputs, args.ratio)
    t_graph = time.perf_counter() - t1
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps({"event": "graph_built", "graph_s": t_graph,
                      "groups": sum(1 for _ in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                                         root_module_types=pruner.root_module_types))}),
          flush=True)
    out = {"event": "done", "load_s": t_load, "graph_s": t_graph}
    if args.also_prune:
        t2 = time.perf_counter()
        for g in pruner.step(interactive=True):
            g.prune()
        recipe_update_config(model)
        with torch.no_grad():
            logits = model(inputs).logits
        out.update({"prune_s": time.perf_counter() - t2, "forward_ok": bool(torch.isfinite(logits).all()),
                    "shapes": shapes(model)["layer0"]})
    print(json.dumps(out), flush=True)


def main_thread_frames(err_lines: list[str]) -> list[str]:
    """The frames of the faulthandler block that contains this script (the main thread)."""
    blocks, cur = [], []
    for line in err_lines:
        if line.startswith(("Thread 0x", "Current thread")):
            cur = []
            blocks.append(cur)
        elif line.strip().startswith("File ") and blocks:
            cur.append(line.strip())
    for b in blocks:
        if any("run_torch_pruning.py" in f for f in b):
            return b[:12]
    return blocks[-1][:12] if blocks else []


def run_timeout_check(python: str, timeout: float, ratio: float, also_prune: bool, env_extra: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONFAULTHANDLER="1")
    env.update(env_extra or {})
    cmd = [python, str(Path(__file__).resolve()), "_graph", "--ratio", str(ratio),
           "--dump-after", str(max(1.0, timeout - 10))]
    if also_prune:
        cmd.append("--also-prune")
    ver = subprocess.run([python, "-c", "import json,sys; sys.path.insert(0, %r); import run_torch_pruning as r; print(json.dumps(r.versions()))" % str(HERE)],
                         env=env, capture_output=True, text=True)
    vers = json.loads(ver.stdout.strip().splitlines()[-1]) if ver.returncode == 0 else {"error": ver.stderr[-500:]}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group only
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    events = []
    for line in stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    ev = {e.get("event"): e for e in events}
    rec = {"versions": vers, "timeout_s": timeout, "pruning_ratio": ratio, "wall_s": round(wall, 1),
           "returncode": None if timed_out else proc.returncode, "timed_out": timed_out,
           "loaded": "loaded" in ev, "load_s": ev.get("loaded", {}).get("load_s"),
           "graph_finished": "graph_built" in ev, "graph_s": ev.get("graph_built", {}).get("graph_s"),
           "finished": "done" in ev}
    if "done" in ev:
        rec.update({k: v for k, v in ev["done"].items() if k not in ("event",)})
    if not rec["finished"]:
        err_lines = [l for l in stderr.splitlines() if l.strip()]
        # first line of the error (the exception line) when it raised; the innermost frames when killed
        exc = [l for l in err_lines if not l.startswith((" ", "Traceback", "Thread", "Current thread", "File"))
               and ("Error" in l or "Exception" in l)]
        rec["error_first_line"] = exc[-1] if exc else None
        rec["stack_at_timeout"] = main_thread_frames(err_lines) if timed_out else None
        rec["stderr_tail"] = "\n".join(err_lines[-15:])
    return rec


def cmd_timeout_check(args) -> None:
    extra = {}
    if args.tp_only:
        extra["PYTHONPATH"] = str(TP_ONLY)
    rec = run_timeout_check(args.python or sys.executable, args.timeout, args.ratio, args.also_prune, extra)
    rec["python"] = args.python or sys.executable
    rec["torch_pruning_from"] = str(TP_ONLY) if args.tp_only else "venv"
    rec["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(rec, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rec, indent=2) + "\n")


def cmd_bisect(args) -> None:
    """Install each transformers version into the TP venv and run the timeout check there."""
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else []
    done = {r["requested"] for r in results}
    for v in args.versions:
        if v in done:
            continue
        t0 = time.perf_counter()
        py = args.python or str(TP_VENV_PY)
        inst = subprocess.run([py, "-m", "pip", "install", "-q", "torch==2.13.0", f"transformers=={v}"],
                              capture_output=True, text=True)
        rec = {"requested": v, "install_rc": inst.returncode}
        if inst.returncode != 0:
            rec["error_first_line"] = next((l for l in inst.stderr.splitlines() if "ERROR" in l), inst.stderr[-300:])
        else:
            rec.update(run_timeout_check(py, args.timeout, args.ratio, True))
        rec["check_wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(rec)
        print(json.dumps({k: rec.get(k) for k in ("requested", "finished", "timed_out", "graph_s", "error_first_line")}),
              flush=True)
        out_path.write_text(json.dumps(results, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------
# prune (TP venv)
# ------------------------------------------------------------------------------------------------


def prune_once(ratio: float):
    import torch

    model = load_model(MODEL_DIR)
    inputs = example_inputs(MODEL_DIR)
    dense_prunable, dense_total = prunable_params(model), distinct_params(model)
    t0 = time.perf_counter()
    pruner = recipe_pruner(model, inputs, ratio)
    t_graph = time.perf_counter() - t0
    for g in pruner.step(interactive=True):
        g.prune()
    recipe_update_config(model)
    del pruner
    t_all = time.perf_counter() - t0
    with torch.no_grad():
        ok = bool(torch.isfinite(model(inputs).logits).all())
    rec = {"pruning_ratio": ratio, "graph_s": round(t_graph, 1), "prune_wall_s": round(t_all, 1),
           "dense_prunable_params": dense_prunable, "dense_params": dense_total,
           "prunable_params": prunable_params(model), "params": distinct_params(model),
           "forward_finite": ok, "shapes": shapes(model)}
    rec["achieved_sparsity"] = 1.0 - rec["prunable_params"] / dense_prunable
    rec["total_params_removed_share"] = 1.0 - rec["params"] / dense_total
    return model, rec


def cmd_prune(args) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    cache: dict[float, dict] = {}

    def achieved(r: float) -> float:
        r = round(r, 4)
        if r not in cache:
            _, rec = prune_once(r)
            cache[r] = rec
            print(json.dumps({"probe_ratio": r, "achieved_sparsity": round(rec["achieved_sparsity"], 4),
                              "graph_s": rec["graph_s"], "layer0": rec["shapes"]["layer0"]}), flush=True)
        return cache[r]["achieved_sparsity"]

    records = []
    for target in args.targets:
        # the achieved share grows with the ratio (in steps: heads come in whole query heads per KV
        # group, widths in multiples of 4); bisect the ratio, then keep the closest probe
        lo, hi = 0.0, 0.9
        for _ in range(args.steps):
            mid = (lo + hi) / 2
            if achieved(mid) < target:
                lo = mid
            else:
                hi = mid
        cands = [r for r in cache if abs(cache[r]["achieved_sparsity"] - target) == min(
            abs(cache[q]["achieved_sparsity"] - target) for q in cache)]
        best = min(cands)
        t0 = time.perf_counter()
        model, rec = prune_once(best)
        out = OUT_ROOT / f"smollm2_tp_target{int(round(target * 100))}"
        if out.exists():
            shutil.rmtree(out)
        model.save_pretrained(str(out), safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
            if (MODEL_DIR / f).exists() and not (out / f).exists():
                shutil.copy(MODEL_DIR / f, out / f)
        rec.update({"target_sparsity": target, "saved_to": str(out), "versions": versions(),
                    "prune_and_save_wall_s": round(time.perf_counter() - t0, 1),
                    "probes": {str(r): round(cache[r]["achieved_sparsity"], 5) for r in sorted(cache)}})
        (out / "tp_record.json").write_text(json.dumps(rec, indent=2) + "\n")
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("target_sparsity", "pruning_ratio", "achieved_sparsity", "params")}),
              flush=True)
    RECORDS_DIR.mkdir(parents=True, exist_ok=True)
    (RECORDS_DIR / "prune_records.json").write_text(json.dumps(records, indent=2) + "\n")


def cmd_roundtrip(args) -> None:
    """Load the dense checkpoint in the TP venv and save it unpruned: evaluating this copy in the main
    venv checks that the conversion for an older transformers (config) loses nothing."""
    model = load_model(MODEL_DIR)
    out = OUT_ROOT / "smollm2_tp_roundtrip_dense"
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out), safe_serialization=True)
    shutil.copy(MODEL_DIR / "tokenizer.json", out / "tokenizer.json")
    shutil.copy(MODEL_DIR / "tokenizer_config.json", out / "tokenizer_config.json")
    print(out)


# ------------------------------------------------------------------------------------------------
# evaluate (main venv)
# ------------------------------------------------------------------------------------------------


def load_pruned_main_venv(d: Path):
    """``from_pretrained`` when transformers accepts the saved config. transformers 5.x refuses a config
    whose ``hidden_size`` is not a multiple of ``num_attention_heads`` (``validate_architecture``), even
    with an explicit ``head_dim`` (Torch-Pruning's recipe gives e.g. hidden 404 with 6 heads); the stock
    ``LlamaForCausalLM`` runs such a model fine. Then: build the config with the next valid hidden size,
    set the saved one before building the model (5.x validates at construction only), and load the saved
    safetensors with every key matched. Returns the model and how it was loaded."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval(), {"load": "from_pretrained"}
    except Exception as e:  # noqa: BLE001
        first = next((l for l in str(e).splitlines() if l.strip()), repr(e)).strip()
        cause = next((l.strip() for l in str(e).splitlines() if "ValueError" in l), first)
    raw = json.loads((d / "config.json").read_text())
    hs, nh = raw["hidden_size"], raw["num_attention_heads"]
    kw = {k: v for k, v in raw.items() if k not in ("architectures", "transformers_version", "_model_name_or_path")}
    cfg = LlamaConfig(**dict(kw, hidden_size=hs + (-hs) % nh))
    cfg.hidden_size = hs
    model = LlamaForCausalLM(cfg)
    sd = load_file(str(d / "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    if unexpected or [k for k in missing if not (k == "lm_head.weight" and tied)]:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.float().eval(), {"load": "config built with a valid hidden size, then set to the saved one; "
                                          "safetensors loaded with all keys matched",
                                  "from_pretrained_error": cause, "missing_keys_tied": list(missing)}


def cmd_evaluate(args) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_prune.quality import fixed_token_set, paired_comparison

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    tokens = fixed_token_set(tok, str(TEST_FILE), num_windows=32, seq_len=256, seed=0)
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    save_file({"tokens": tokens}, str(OUT_ROOT / "token_set_test_32x256_seed0.safetensors"))
    dense = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32).eval()
    rows = []
    dirs = [Path(d) for d in args.models]
    for d in dirs:
        t0 = time.perf_counter()
        pruned, how = load_pruned_main_venv(d)
        cmp = paired_comparison(dense, pruned, tokens)
        # Torch-Pruning unties lm_head from the embedding in memory (two pruned copies); the checkpoint is
        # saved with tie_word_embeddings, so the reload ties them again: check the copies were equal
        from safetensors import safe_open

        with safe_open(str(d / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
            lm_sep = "lm_head.weight" in keys
            tie_diff = (float((f.get_tensor("lm_head.weight") - f.get_tensor("model.embed_tokens.weight")).abs().max())
                        if lm_sep else None)
        rec_path = d / "tp_record.json"
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        row = {"model_dir": str(d), "ppl_ratio": cmp["pruned_ppl"] / cmp["dense_ppl"], **cmp,
               "eval_params": prunable_params(pruned), "eval_total_params": distinct_params(pruned),
               "eval_lm_head_tied": pruned.lm_head.weight is pruned.model.embed_tokens.weight,
               "saved_lm_head_separately": lm_sep, "saved_lm_head_minus_embedding_maxabs": tie_diff,
               "eval_wall_s": round(time.perf_counter() - t0, 1), "eval_versions": versions(), "eval_load": how,
               "prune": rec}
        rows.append(row)
        RECORDS_DIR.mkdir(parents=True, exist_ok=True)
        (RECORDS_DIR / "eval_records.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(json.dumps({"model": d.name, "ppl_ratio": round(row["ppl_ratio"], 4),
                          "delta_nll_se": cmp.get("delta_nll_se"),
                          "achieved_sparsity": rec.get("achieved_sparsity"), "params": row["eval_total_params"]}),
              flush=True)
        del pruned
    RECORDS_DIR.mkdir(parents=True, exist_ok=True)
    (RECORDS_DIR / "eval_records.json").write_text(json.dumps(rows, indent=2) + "\n")


def plain_window_nll(model, tokens):
    """Per-window mean next-token NLL (float64), as ``hf_prune.quality.window_nll`` computes it; written out
    here because hf_prune itself (transformers 5.x) cannot be imported in the Torch-Pruning venv."""
    import torch

    out = []
    with torch.no_grad():
        for batch in tokens.split(16):
            logits = model(input_ids=batch).logits[:, :-1].float()
            x = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1),
                                                  reduction="none")
            out.append(x.view(batch.size(0), -1).double().mean(dim=1))
    return torch.cat(out)


def cmd_evaluate_tp(args) -> None:
    """Cross-check in the Torch-Pruning venv: a plain torch re-computation of the same windows (the token set
    saved by ``evaluate``), dense and pruned loaded by this (older) transformers; per-window mean NLL as
    ``hf_prune.quality.window_nll`` (logits[:, :-1] against tokens[:, 1:], float64 mean per window)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    tokens = load_file(str(OUT_ROOT / "token_set_test_32x256_seed0.safetensors"))["tokens"]

    dense = plain_window_nll(load_model(MODEL_DIR), tokens)
    rows = []
    for d in [Path(x) for x in args.models]:
        m = AutoModelForCausalLM.from_pretrained(str(d), torch_dtype=torch.float32).eval()
        b = plain_window_nll(m, tokens)
        diff = b - dense
        row = {"model_dir": str(d), "dense_ppl": math.exp(float(dense.mean())), "pruned_ppl": math.exp(float(b.mean())),
               "ppl_ratio": math.exp(float(b.mean()) - float(dense.mean())),
               "delta_nll_se": float(diff.std(unbiased=True) / math.sqrt(diff.numel())), "versions": versions()}
        rows.append(row)
        print(json.dumps({"model": d.name, "ppl_ratio": round(row["ppl_ratio"], 4)}), flush=True)
    (RECORDS_DIR / "eval_tp_venv_crosscheck.json").write_text(json.dumps(rows, indent=2) + "\n")


def cmd_reload_check(args) -> None:
    """Prune in memory at the recorded ratio and compare logits with the saved-and-reloaded model (TP venv),
    on the first 4 windows of the saved token set: a save/reload bug would show here."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    tokens = load_file(str(OUT_ROOT / "token_set_test_32x256_seed0.safetensors"))["tokens"][:4]
    out = []
    for d in [Path(x) for x in args.models]:
        rec = json.loads((d / "tp_record.json").read_text())
        mem, _ = prune_once(rec["pruning_ratio"])
        disk = AutoModelForCausalLM.from_pretrained(str(d), torch_dtype=torch.float32).eval()
        with torch.no_grad():
            a, b = mem(input_ids=tokens).logits, disk(input_ids=tokens).logits
        r = {"model_dir": str(d), "pruning_ratio": rec["pruning_ratio"], "max_abs_logit_diff": float((a - b).abs().max()),
             "in_memory_nll": float(torch.nn.functional.cross_entropy(a[:, :-1].reshape(-1, a.size(-1)), tokens[:, 1:].reshape(-1))),
             "versions": versions()}
        out.append(r)
        print(json.dumps(r), flush=True)
    (RECORDS_DIR / "reload_check.json").write_text(json.dumps(out, indent=2) + "\n")


def cmd_diagnose(args) -> None:
    """Why is the pruned model so bad? (TP venv) 1) Recover, from the weights, which residual (hidden)
    channels every module of the saved model kept, and check they are the same set everywhere (a
    structurally consistent cut). 2) Slice ONLY those hidden channels out of the dense model (all heads and
    MLP neurons kept) and 3) only the recipe's heads + MLP neurons (hidden kept), and evaluate both on the
    same windows: which part of the recipe's cut does the damage."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    tokens = load_file(str(OUT_ROOT / "token_set_test_32x256_seed0.safetensors"))["tokens"]

    def match_cols(dense_w, pruned_w, dim):
        """indices i of dense_w along dim such that pruned_w's slices equal them, in order"""
        d = dense_w.movedim(dim, 0).reshape(dense_w.size(dim), -1)
        p = pruned_w.movedim(dim, 0).reshape(pruned_w.size(dim), -1)
        if d.size(1) != p.size(1):
            return None
        idx = torch.cdist(p.double(), d.double()).argmin(1)
        exact = torch.equal(p, d[idx])  # the nearest dense slice must be bit-identical
        return idx.tolist() if exact else None

    dense = load_model(MODEL_DIR)
    base = plain_window_nll(dense, tokens)
    out = []
    for d in [Path(x) for x in args.models]:
        pr = AutoModelForCausalLM.from_pretrained(str(d), torch_dtype=torch.float32).eval()
        sets = {"embed_tokens(cols)": match_cols(dense.model.embed_tokens.weight, pr.model.embed_tokens.weight, 1),
                "final norm": None}
        hid = sets["embed_tokens(cols)"]
        consistent = hid is not None
        heads_kept, neurons_kept = [], []
        for i, (ld, lp) in enumerate(zip(dense.model.layers, pr.model.layers)):
            checks = {
                "input_layernorm": torch.equal(ld.input_layernorm.weight[hid], lp.input_layernorm.weight),
                "post_attention_layernorm": torch.equal(ld.post_attention_layernorm.weight[hid], lp.post_attention_layernorm.weight),
                "k_proj(in)": torch.equal(ld.self_attn.k_proj.weight[:, hid], lp.self_attn.k_proj.weight),
                "v_proj(in)": torch.equal(ld.self_attn.v_proj.weight[:, hid], lp.self_attn.v_proj.weight),
            }
            q_rows = match_cols(ld.self_attn.q_proj.weight[:, hid], lp.self_attn.q_proj.weight, 0)
            n_rows = match_cols(ld.mlp.gate_proj.weight[:, hid], lp.mlp.gate_proj.weight, 0)
            checks["q_proj rows found"] = q_rows is not None
            checks["gate_proj rows found"] = n_rows is not None
            if q_rows is not None:
                checks["o_proj(out rows hid, in cols q)"] = torch.equal(ld.self_attn.o_proj.weight[hid][:, q_rows], lp.self_attn.o_proj.weight)
            if n_rows is not None:
                checks["up_proj"] = torch.equal(ld.mlp.up_proj.weight[n_rows][:, hid], lp.mlp.up_proj.weight)
                checks["down_proj"] = torch.equal(ld.mlp.down_proj.weight[hid][:, n_rows], lp.mlp.down_proj.weight)
            consistent = consistent and all(checks.values())
            if not all(checks.values()):
                print(json.dumps({"layer": i, "failed": [k for k, v in checks.items() if not v]}), flush=True)
            heads_kept.append(q_rows)
            neurons_kept.append(n_rows)
        consistent = consistent and torch.equal(dense.model.norm.weight[hid], pr.model.norm.weight)
        row = {"model_dir": str(d), "hidden_kept": len(hid) if hid else None, "structurally_consistent": consistent}
        if consistent:
            # (2) hidden channels only: slice the dense model's residual stream to the recipe's set
            import copy
            h = torch.tensor(hid)
            m = copy.deepcopy(dense)
            with torch.no_grad():
                emb = torch.nn.Parameter(m.model.embed_tokens.weight[:, h].clone())
                m.model.embed_tokens.weight = emb
                m.lm_head.weight = emb
                for lay in m.model.layers:
                    for norm in (lay.input_layernorm, lay.post_attention_layernorm):
                        norm.weight = torch.nn.Parameter(norm.weight[h].clone())
                    for lin in (lay.self_attn.q_proj, lay.self_attn.k_proj, lay.self_attn.v_proj, lay.mlp.gate_proj, lay.mlp.up_proj):
                        lin.weight = torch.nn.Parameter(lin.weight[:, h].clone()); lin.in_features = len(hid)
                    for lin in (lay.self_attn.o_proj, lay.mlp.down_proj):
                        lin.weight = torch.nn.Parameter(lin.weight[h].clone()); lin.out_features = len(hid)
                m.model.norm.weight = torch.nn.Parameter(m.model.norm.weight[h].clone())
            hid_only = plain_window_nll(m, tokens)
            del m
            # (3) heads + MLP neurons only (hidden kept): zero the removed q heads' o_proj columns and the removed
            # neurons' down_proj columns == removing them
            m = copy.deepcopy(dense)
            with torch.no_grad():
                for lay, q_rows, n_rows in zip(m.model.layers, heads_kept, neurons_kept):
                    keep_q = torch.zeros(lay.self_attn.o_proj.in_features, dtype=torch.bool); keep_q[q_rows] = True
                    lay.self_attn.o_proj.weight[:, ~keep_q] = 0
                    keep_n = torch.zeros(lay.mlp.down_proj.in_features, dtype=torch.bool); keep_n[n_rows] = True
                    lay.mlp.down_proj.weight[:, ~keep_n] = 0
            width_only = plain_window_nll(m, tokens)
            del m
            row.update({"ppl_ratio_recipe_hidden_only": math.exp(float(hid_only.mean() - base.mean())),
                        "ppl_ratio_recipe_heads_and_mlp_only": math.exp(float(width_only.mean() - base.mean())),
                        "full_recipe_ppl_ratio": math.exp(float(plain_window_nll(pr, tokens).mean() - base.mean()))})
        out.append(row)
        print(json.dumps(row), flush=True)
    path = RECORDS_DIR / "diagnose.json"  # merged by model, so runs for different models can be separate
    prev = [r for r in (json.loads(path.read_text()) if path.exists() else [])
            if r["model_dir"] not in {o["model_dir"] for o in out}]
    path.write_text(json.dumps(sorted(prev + out, key=lambda r: r["model_dir"]), indent=2) + "\n")


def cmd_report(args) -> None:
    """Assemble eval/results/torch_pruning_smollm2.{json,md} from the records (no number typed here)."""
    def load(name):
        p = RECORDS_DIR / name
        return json.loads(p.read_text()) if p.exists() else None

    timeout5 = load("timeout_check_tf5.json")
    cross = load("eval_tp_venv_crosscheck.json") or []
    probes = []
    p = RECORDS_DIR / "prune_log.jsonl"
    if p.exists():
        probes = [json.loads(l) for l in p.read_text().splitlines() if l.startswith('{"probe_ratio"')]
    bisect = load("bisect.json")
    evals = load("eval_records.json") or []
    roundtrip = [r for r in evals if "roundtrip" in r["model_dir"]]
    budgets = [r for r in evals if "roundtrip" not in r["model_dir"]]
    out = {"model": "SmolLM2-135M-Instruct, Q4_1-dequantized weights (eval/models/smollm2-135m)",
           "method": "Torch-Pruning LLM recipe (examples/LLMs/prune_llm.py), GroupMagnitudeImportance p=2 mean, "
                     "local, one ratio for hidden/MLP/heads, round_to=4; data-free (no calibration)",
           "eval": "hf_prune.quality.paired_comparison on fixed_token_set(test.jsonl, 32 windows x 256, seed 0)",
           "timeout_check_transformers5": timeout5, "transformers_bisect": bisect,
           "roundtrip_dense_check": roundtrip, "budgets": budgets, "crosscheck_in_tp_venv": cross,
           "ratio_probes": probes}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "torch_pruning_smollm2.json").write_text(json.dumps(out, indent=2) + "\n")

    L = ["# Torch-Pruning (as itself) on SmolLM2-135M", "",
         "Generated by `eval/torch_pruning/run_torch_pruning.py report` from `eval/torch_pruning/records/`; "
         "no number typed by hand. Weights: SmolLM2-135M-Instruct **Q4_1-dequantized** (float32).", ""]
    if timeout5:
        v = timeout5["versions"]
        L += ["## Dependency graph on transformers 5.x (Torch-Pruning issue #527)", "",
              f"transformers {v.get('transformers')}, torch {v.get('torch')}, torch-pruning {v.get('torch-pruning')}: "
              f"building the recipe's pruner (dependency graph) "
              + (f"**did not finish within {timeout5['timeout_s']:.0f} s** (killed)" if timeout5["timed_out"]
                 else f"finished={timeout5['finished']} in {timeout5.get('graph_s')} s")
              + f"; model load {timeout5.get('load_s') and round(timeout5['load_s'], 1)} s.", ""]
        if timeout5.get("stack_at_timeout"):
            L += ["Innermost frames when killed:", "", "```"] + timeout5["stack_at_timeout"][:6] + ["```", ""]
    if bisect:
        L += ["## Which transformers works", "", "| transformers | graph built | graph s | pruned + forward | error (first line) |",
              "|---|---|---|---|---|"]
        for r in bisect:
            L.append(f"| {r['requested']} | {r.get('graph_finished')} | "
                     f"{'' if r.get('graph_s') is None else round(r['graph_s'], 1)} | "
                     f"{r.get('finished') and r.get('forward_ok')} | "
                     f"{'timeout %ss' % r['timeout_s'] if r.get('timed_out') else (r.get('error_first_line') or '')} |")
        L.append("")
    if roundtrip:
        r = roundtrip[0]
        L += [f"Round trip (dense checkpoint loaded and saved in the Torch-Pruning venv, evaluated in the main venv): "
              f"perplexity ratio {r['ppl_ratio']:.6f} (1.0 means the conversion lost nothing).", ""]
    if budgets:
        L += ["## Perplexity at matched budgets", "",
              "Share of prunable (attention + MLP) parameters removed; the recipe also prunes the hidden size, so the "
              "embedding shrinks too (total parameters column).", "",
              "| target | Torch-Pruning ratio | achieved sparsity | q/kv heads, hidden, MLP (every layer) | params | "
              "dense PPL | pruned PPL | PPL ratio | paired SE (NLL) | transformers | prune s | eval s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in budgets:
            p = r["prune"]
            s = p["shapes"]["layer0"]
            L.append(f"| {p['target_sparsity']:.0%} | {p['pruning_ratio']} | {p['achieved_sparsity']:.1%} | "
                     f"{s['q_heads']}/{s['kv_heads']}, {s['hidden']}, {s['intermediate']} | {r['eval_total_params']:,} | "
                     f"{r['dense_ppl']:.3f} | {r['pruned_ppl']:.3f} | {r['ppl_ratio']:.3f} | {r['delta_nll_se']:.4f} | "
                     f"{p['versions']['transformers']} | {p['prune_and_save_wall_s']} | {r['eval_wall_s']} |")
        L.append("")
        L += ["A uniform guess over the vocabulary (49152 tokens) has perplexity 49152; pruned perplexities above it: "
              + ", ".join(f"{r['prune']['target_sparsity']:.0%}: {r['pruned_ppl'] > 49152}" for r in budgets) + ".", ""]
        L += ["Parameters are counted after reload (tied embedding once). In memory, Torch-Pruning unties `lm_head` "
              "from the embedding (two pruned copies); the saved copies are equal "
              + ", ".join(f"(max abs diff {r['saved_lm_head_minus_embedding_maxabs']})" if r["saved_lm_head_separately"]
                          else "(lm_head not saved separately)" for r in budgets)
              + " and the reload ties them again.", ""]
        odd = [r for r in budgets if r.get("eval_load", {}).get("load") != "from_pretrained"]
        for r in odd:
            L += [f"`{Path(r['model_dir']).name}`: transformers {r['eval_versions']['transformers']} refuses the saved config "
                  f"(`{r['eval_load'].get('from_pretrained_error')}`) although `head_dim` is explicit; loaded as: "
                  f"{r['eval_load']['load']}.", ""]
    if cross:
        L += ["Cross-check, plain torch re-computation of the same windows inside the Torch-Pruning venv "
              f"(transformers {cross[0]['versions']['transformers']}): "
              + "; ".join(f"{Path(c['model_dir']).name} PPL ratio {c['ppl_ratio']:.4f}" for c in cross) + ".", ""]
    diag = load("diagnose.json") or []
    out["diagnose"] = diag
    (RESULTS_DIR / "torch_pruning_smollm2.json").write_text(json.dumps(out, indent=2) + "\n")
    if diag:
        L += ["## Where the damage comes from (`diagnose`, Torch-Pruning venv, same windows)", "",
              "The kept residual channels, query heads and MLP neurons were recovered from the saved weights "
              "(bit-identical slices of the dense weights) and checked to be one consistent cut in every module. "
              "Then the dense model was cut with only the recipe's hidden-size choice, or only its heads + MLP "
              "neurons (removed heads / neurons masked exactly: their o_proj / down_proj columns zeroed).", "",
              "| model | cut consistent | hidden kept | PPL ratio: hidden cut only | heads + MLP only | full recipe |",
              "|---|---|---|---|---|---|"]
        for r in diag:
            f = lambda k: "" if r.get(k) is None else f"{r[k]:.1f}"
            L.append(f"| {Path(r['model_dir']).name} | {r['structurally_consistent']} | {r['hidden_kept']} | "
                     f"{f('ppl_ratio_recipe_hidden_only')} | {f('ppl_ratio_recipe_heads_and_mlp_only')} | "
                     f"{f('full_recipe_ppl_ratio')} |")
        L.append("")
    if probes:
        L += ["Ratio probes (ratio: query heads kept per layer, achieved sparsity): "
              + ", ".join(f"{q['probe_ratio']}: {q['layer0']['q_heads']}, {q['achieved_sparsity']:.3f}"
                          for q in sorted(probes, key=lambda q: q["probe_ratio"])) + ".", ""]
    (RESULTS_DIR / "torch_pruning_smollm2.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("_graph")
    g.add_argument("--ratio", type=float, default=0.2)
    g.add_argument("--dump-after", type=float, default=290)
    g.add_argument("--also-prune", action="store_true")
    t = sub.add_parser("timeout-check")
    t.add_argument("--python", default=None, help="interpreter to test (default: this one)")
    t.add_argument("--tp-only", action="store_true", help=f"put {TP_ONLY} on PYTHONPATH (main venv)")
    t.add_argument("--timeout", type=float, default=300)
    t.add_argument("--ratio", type=float, default=0.2)
    t.add_argument("--also-prune", action="store_true")
    t.add_argument("--out", default=None)
    b = sub.add_parser("bisect")
    b.add_argument("versions", nargs="+")
    b.add_argument("--timeout", type=float, default=240)
    b.add_argument("--ratio", type=float, default=0.2)
    b.add_argument("--out", default=str(RECORDS_DIR / "bisect.json"))
    b.add_argument("--python", default=None, help="venv interpreter to install into (default: eval/torch_pruning/.venv)")
    p = sub.add_parser("prune")
    p.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    p.add_argument("--steps", type=int, default=8)
    sub.add_parser("roundtrip")
    e = sub.add_parser("evaluate")
    e.add_argument("models", nargs="+")
    e2 = sub.add_parser("evaluate-tp")
    e2.add_argument("models", nargs="+")
    e3 = sub.add_parser("reload-check")
    e3.add_argument("models", nargs="+")
    e4 = sub.add_parser("diagnose")
    e4.add_argument("models", nargs="+")
    sub.add_parser("report")
    args = ap.parse_args(argv)
    {"_graph": cmd_graph_worker, "timeout-check": cmd_timeout_check, "bisect": cmd_bisect, "prune": cmd_prune,
     "roundtrip": cmd_roundtrip, "evaluate": cmd_evaluate, "evaluate-tp": cmd_evaluate_tp,
     "reload-check": cmd_reload_check, "diagnose": cmd_diagnose, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
