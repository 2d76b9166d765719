"""hf-prune side by side with re-implemented peers, same model, same budget, same calibration tokens.

For every model and calibration seed, statistics (channel sums and first-order Taylor sums) are taken
ONCE on the dense model from the same calibration rows; every method then plans at every budget from
them (or from its own pass over the same rows: Wanda-sp's sequential pass, LLM-Pruner's element-wise
gradients, ShortGPT's Block Influence). A plan is evaluated with masks when it is a pure group
removal, and by cutting a copy (hf-prune surgery) when it folds a bias (EMP + bias, FLAP) or deletes
layers (ShortGPT). Quality is the perplexity ratio pruned/dense on fixed held-out windows, paired
(the same windows for every model), with the paired standard error of the mean per-token NLL
difference; the achieved share of prunable (attention + MLP) parameters removed is printed beside
every number.

    HF_HUB_OFFLINE=1 python eval/compare.py --quick                  # reference model, seed 0, 35%
    HF_HUB_OFFLINE=1 python eval/compare.py --models reference smollm2

SmolLM2-135M (``scripts/fetch_smollm2.py``) is the Q4_1-dequantized SmolLM2-135M-Instruct.
Hyperflux trains gates for ``--hyperflux-steps`` + ``--hyperflux-regrowth`` steps of 4 rows of
``--hyperflux-row-len`` tokens cut from the same calibration tokens (gate lr 0.01, tick every 10 steps,
pressure exponent 3, as ``eval/bench_hyperflux.py``). The search (``--target search``) measures its
costs on ``--search-rows`` further rows of the same token stream, which no method scores. Beside perplexity, every pruned model is scored on
the project's lm-eval multiple-choice task (``hfprune_next_sentence``, first ``--mc-items`` items).

What costs most on 2 CPU cores is Hyperflux (a forward and backward pass per step), the search (a
partial forward pass per candidate) and the multiple-choice task (4 continuations per item); they run on
the first ``costly_seeds`` calibration seeds of each model (``MODELS``; ``--costly-seeds`` overrides), every other method on every seed.
Torch-Pruning cannot build its dependency graph on this transformers (its issue #527): its rows are read
from ``eval/results/torch_pruning_smollm2.json``, written by ``eval/torch_pruning/`` in its own venv on
the same weights and the same held-out windows (checked here: same dense perplexity).

Rows are saved as they are measured (``<name>.partial.json``); ``--resume`` skips the rows already
there (or in the finished ``<name>.json``) when the settings are unchanged, so an interrupted run loses
at most one row, and a method (or a seed) added later is measured alone; the saved rows of the models run
are kept even when this run's method list leaves them out.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from baselines import common, flap, llm_pruner, random_pruning, shortgpt, slicegpt, slimgpt, wanda_sp
from bench_common import EVAL_DIR, REFERENCE_DIR, RESULTS_DIR, save_ratio_figure

from hf_prune import PruningConfig
from hf_prune.adapters import count_parameters, get_adapter
from hf_prune.calibration.statistics import CalibrationStatistics, collect_channel_statistics, collect_taylor_statistics
from hf_prune.cut.apply import apply_pruning
from hf_prune.corpus import resolve_split_file
from hf_prune.cut.masks import GroupMasks, keep_masks
from hf_prune.plan.planner import calibration_ids, make_plan
from hf_prune.quality import NEXT_SENTENCE_TASK, fixed_token_set, window_nll
from hf_prune.quality import evaluate as lm_eval_quality


@dataclass(frozen=True)
class ModelUnderTest:
    path: Path
    description: str
    costly_seeds: int  # calibration seeds that also get Hyperflux and the multiple-choice task


MODELS = {
    "reference": ModelUnderTest(REFERENCE_DIR, "5M Llama trained here (eval/reference)", costly_seeds=2),
    "smollm2": ModelUnderTest(EVAL_DIR / "models" / "smollm2-135m",
                              "SmolLM2-135M-Instruct, Q4_1-dequantized weights", costly_seeds=1),
}
# settings that only choose which rows run (a row records its model, method, seed and budget), not what a row measures
ROW_SELECTORS = {"models", "methods", "seeds", "sparsities", "costly_seeds"}
COSTLY_METHODS = {"Hyperflux (uniform init)", "search (activation)", "search + least squares (activation)",
                  "search + least squares on dense inputs (activation)",
                  "search + least squares, asymmetric (activation)",
                  "search + least squares, one pass per layer (activation)"}
TORCH_PRUNING_RESULTS = RESULTS_DIR / "torch_pruning_smollm2.json"


@dataclass
class Context:
    """One model and one calibration seed: everything a method may read."""

    model: Any
    tokenizer: Any
    scopes: list
    layers: Any
    calibration: torch.Tensor
    stats: CalibrationStatistics
    seed: int
    batch_size: int
    held_out: torch.Tensor | None = None  # further calibration rows, never scored: the search's cost rows
    search: dict[str, Any] = field(default_factory=dict)  # PruningConfig fields of the search
    hyperflux: dict[str, Any] = field(default_factory=dict)  # PruningConfig fields of the Hyperflux runs
    cache: dict[str, Any] = field(default_factory=dict)  # per-seed products reused across budgets

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


@dataclass
class Outcome:
    """A method's decision at one budget, ready to evaluate."""

    kept: dict[str, list[int]] | None = None  # evaluate with masks
    model: Any = None  # or a pruned copy
    plan: common.BaselinePlan | None = None  # for sparsity bookkeeping of peers
    achieved: float | None = None
    counts: dict[str, list[int]] | None = None  # kept groups when ``model`` is a cut copy
    sliced_dimension: int | None = None  # SliceGPT: the residual width it keeps (it removes no groups)

    def allocation(self) -> dict[str, Any]:
        """What was kept, for the JSON: groups per scope, removed layers (ShortGPT), the sliced width (SliceGPT)."""
        kept = self.kept if self.kept is not None else (self.plan.kept if self.plan else self.counts) or {}
        allocation = {"kept_groups": {name: len(groups) for name, groups in kept.items()},
                      "removed_layers": list(self.plan.removed_layers) if self.plan else []}
        if self.sliced_dimension is not None:
            allocation["sliced_dimension"] = self.sliced_dimension
        return allocation


def outcome_of(ctx: Context, config: PruningConfig, plan: Any) -> Outcome:
    """A pure group removal is evaluated with masks; a compensated plan changes weights, so a copy is cut."""
    if config.compensate == "none":
        return Outcome(kept=plan.kept)
    pruned = copy.deepcopy(ctx.model)
    report = apply_pruning(pruned, config, plan)
    return Outcome(model=pruned, achieved=report.achieved_sparsity, counts=report.plan)


def hf_prune_method(target: str, units: str, importance: str, compensate: str = "none",
                    refit_on: str = "pruned") -> Callable:
    def run(ctx: Context, sparsity: float) -> Outcome:
        config = PruningConfig(target=target, units=units, sparsity=sparsity, importance=importance,
                               compensate=compensate, refit_on=refit_on, calibration="reference", seed=ctx.seed)
        # the rows go with the shared statistics: a refit on pruned inputs walks them through the cut layers
        return outcome_of(ctx, config, make_plan(ctx.model, config, input_ids=ctx.calibration, statistics=ctx.stats))

    return run


def hyperflux_method(ctx: Context, sparsity: float) -> Outcome:
    """Gates trained on the same calibration rows (uniform init, the bench_hyperflux settings)."""
    options = dict(ctx.hyperflux)
    row_len = options.pop("row_len")
    rows = ctx.calibration[:, : ctx.calibration.shape[1] // row_len * row_len].reshape(-1, row_len)
    config = PruningConfig.from_dict(dict(target="hyperflux", units="all", sparsity=sparsity, calibration="reference",
                                          seed=ctx.seed, **options))
    return Outcome(kept=make_plan(ctx.model, config, input_ids=rows).kept)


def search_method(compensate: str = "none", refit_on: str = "pruned", sequential: bool = False,
                  costs: str = "global") -> Callable:
    def run(ctx: Context, sparsity: float) -> Outcome:
        """Measured costs on the held-out rows, ordered by the shared activation scores; the first cost table
        is measured once per seed (cached in the statistics) and reused at every budget."""
        config = PruningConfig.from_dict(dict(
            target="search", sparsity=sparsity, importance="activation", compensate=compensate, refit_on=refit_on,
            calibration="reference", seed=ctx.seed, search_rows=ctx.held_out.shape[0], sequential=sequential,
            search_costs=costs, **_search_options(ctx, costs)))
        rows = torch.cat([ctx.calibration, ctx.held_out])  # make_plan holds out the last search_rows rows
        return outcome_of(ctx, config, make_plan(ctx.model, config, input_ids=rows, statistics=ctx.stats))

    return run


def _search_options(ctx: Context, costs: str) -> dict:
    """The search's settings of this comparison; the probes' rows apply to local costs only (global costs carry
    every candidate on every row)."""
    options = dict(ctx.search)
    if costs != "local":
        options.pop("search_probe_rows", None)
    return options


def peer(fn: Callable[[Context, float], common.BaselinePlan]) -> Callable:
    def run(ctx: Context, sparsity: float) -> Outcome:
        plan = fn(ctx, sparsity)
        achieved = common.achieved_sparsity(ctx.model, ctx.scopes, plan)
        if plan.channel_means is None and not plan.removed_layers:
            return Outcome(kept=plan.kept, plan=plan, achieved=achieved)
        return Outcome(model=common.materialize(ctx.model, ctx.scopes, plan), plan=plan, achieved=achieved)

    return run


def rebuilt_by_slimgpt(ctx: Context, sparsity: float) -> Outcome:
    """SlimGPT writes its own weights (OBS updates of the kept columns, layer by layer on the pruned prefix): a copy."""
    pruned, plan = slimgpt.slimgpt_prune(ctx.model, ctx.scopes, ctx.layers, ctx.calibration, sparsity,
                                         batch_size=ctx.batch_size)
    return Outcome(model=pruned, plan=plan, achieved=common.achieved_sparsity(ctx.model, ctx.scopes, plan))


def sliced_by_slicegpt(ctx: Context, sparsity: float) -> Outcome:
    """SliceGPT deletes residual-stream dimensions (a rotated, narrower copy): compared at the same share of the
    prunable parameters removed, its shortcut matrices counted as kept."""
    sliced, achieved, details = slicegpt.slicegpt_prune(ctx.model, ctx.calibration, sparsity,
                                                        batch_size=ctx.batch_size)
    return Outcome(model=sliced, achieved=achieved, sliced_dimension=details["dimension"])


def _random_at_uniform(ctx: Context, sparsity: float) -> common.BaselinePlan:
    config = PruningConfig(target="uniform", units="all", sparsity=sparsity, importance="magnitude")
    counts = random_pruning.kept_counts(make_plan(ctx.model, config).kept)
    return random_pruning.random_plan(ctx.scopes, counts, seed=ctx.seed)


METHODS: dict[str, tuple[str, Callable]] = {  # label -> (who, run)
    "uniform (activation)": ("hf-prune", hf_prune_method("uniform", "all", "activation")),
    "uniform, MLP only (activation)": ("hf-prune", hf_prune_method("uniform", "mlp", "activation")),
    "EMP (activation)": ("hf-prune", hf_prune_method("emp", "all", "activation")),
    "EMP, MLP only (activation)": ("hf-prune", hf_prune_method("emp", "mlp", "activation")),
    "EMP (fluctuation)": ("hf-prune", hf_prune_method("emp", "all", "fluctuation")),
    "EMP + bias (fluctuation)": ("hf-prune", hf_prune_method("emp", "all", "fluctuation", "bias")),
    "uniform, MLP only + least squares (activation)": ("hf-prune", hf_prune_method("uniform", "mlp", "activation",
                                                                                   "lstsq")),
    "uniform, MLP only + least squares on dense inputs (activation)": ("hf-prune", hf_prune_method(
        "uniform", "mlp", "activation", "lstsq", refit_on="dense")),
    "uniform, MLP only + least squares, asymmetric (activation)": ("hf-prune", hf_prune_method(
        "uniform", "mlp", "activation", "lstsq", refit_on="asymmetric")),
    "uniform, MLP only + OBS selection (activation)": ("hf-prune", hf_prune_method("uniform", "mlp", "activation",
                                                                                  "obs")),
    "Hyperflux (uniform init)": ("hf-prune", hyperflux_method),
    "search (activation)": ("hf-prune", search_method()),
    "search + least squares (activation)": ("hf-prune", search_method("lstsq")),
    "search + OBS selection (activation)": ("hf-prune", search_method("obs")),
    "search + least squares, local costs (activation)": ("hf-prune", search_method("lstsq", costs="local")),
    "search + OBS selection, local costs (activation)": ("hf-prune", search_method("obs", costs="local")),
    "search + least squares on dense inputs (activation)": ("hf-prune", search_method("lstsq", refit_on="dense")),
    "search + least squares, asymmetric (activation)": ("hf-prune", search_method("lstsq", refit_on="asymmetric")),
    # what --layerwise / --device-map run: costs in one pass over the layers, each layer's statistics gathered there
    "search + least squares, one pass per layer (activation)": ("hf-prune", search_method("lstsq", sequential=True)),
    "FLAP": ("peer", peer(lambda c, s: flap.flap_plan(c.model, c.scopes, c.stats, s))),
    "Wanda-sp": ("peer", peer(lambda c, s: wanda_sp.wanda_sp_plan(c.model, c.scopes, c.layers, c.calibration, s,
                                                                  batch_size=c.batch_size))),
    "LLM-Pruner (block-wise, no tuning)": ("peer", peer(lambda c, s: llm_pruner.llm_pruner_plan(
        c.model, c.scopes, c.calibration, s, batch_size=c.batch_size, grads=c.once("taylor-grads", lambda: (
            llm_pruner.elementwise_taylor_gradients(c.model, c.scopes, c.calibration, c.batch_size)))))),
    "ShortGPT (whole layers)": ("peer", peer(lambda c, s: shortgpt.shortgpt_plan(
        c.model, c.scopes, c.layers, c.calibration, s, batch_size=c.batch_size,
        bi=c.once("block-influence", lambda: shortgpt.block_influence(c.model, c.layers, c.calibration, c.batch_size))))),
    "SlimGPT (structured OBS, pruned inputs)": ("peer", rebuilt_by_slimgpt),
    "SliceGPT (PCA slicing, equal parameters)": ("peer", sliced_by_slicegpt),
    "random (uniform allocation)": ("floor", peer(_random_at_uniform)),
}


def pruned_view(ctx: Context, outcome: Outcome) -> contextlib.AbstractContextManager:
    """The pruned model to score: the cut copy, or the dense model under the plan's masks."""
    if outcome.model is not None:
        return contextlib.nullcontext(outcome.model)
    masks = GroupMasks(ctx.model, ctx.scopes, keep_masks(ctx.scopes, outcome.kept))
    return _entered(masks, ctx.model)


@contextlib.contextmanager
def _entered(masks: GroupMasks, model: Any):
    with masks:
        yield model


def multiple_choice(model: Any, tokenizer: Any, items: int, batch_size: int) -> dict[str, float]:
    """Accuracy on the first ``items`` items of the shipped lm-eval multiple-choice task, with its binomial SE."""
    result = lm_eval_quality(model, tokenizer, tasks=[NEXT_SENTENCE_TASK], limit=items, batch_size=batch_size)
    accuracy, count = result["next_sentence_acc"], result["next_sentence_items"]
    return {"mc_acc": accuracy, "mc_acc_se": math.sqrt(accuracy * (1 - accuracy) / count), "mc_items": int(count)}


def masked_sparsity(ctx: Context, kept: dict[str, list[int]]) -> float:
    return common.achieved_sparsity(ctx.model, ctx.scopes, common.BaselinePlan("", kept))


def pruned_parameters(ctx: Context, outcome: Outcome, dense_parameters: int) -> int:
    """Parameters of the pruned model: counted on a cut copy, or dense minus what the masks remove."""
    if outcome.model is not None:
        return count_parameters(outcome.model)
    return dense_parameters - common.removed_params(ctx.model, ctx.scopes, common.BaselinePlan("", outcome.kept))


def torch_pruning_rows(name: str, dense_ppl: float, path: Path = TORCH_PRUNING_RESULTS) -> list[dict[str, Any]]:
    """Torch-Pruning's recorded rows for this model, if they were measured on the same held-out windows.

    The same windows are recognised by the same dense perplexity (to 1e-6 relative); otherwise no row is
    taken, and the table says why. A timeout on this transformers is a row of its own.
    """
    if name != "smollm2" or not path.exists():
        return []
    data = json.loads(path.read_text())
    label = "Torch-Pruning (PyPI, own LLM recipe)"
    timeout = data["timeout_check_transformers5"]
    rows = [{"model": name, "method": f"{label}, transformers {timeout['versions']['transformers']}", "who": "peer",
             "seed": None, "sparsity": timeout["pruning_ratio"],
             "skipped": f"dependency graph not built within {timeout['timeout_s']:.0f} s (Torch-Pruning issue #527)"}]
    for budget in data["budgets"]:
        prune = budget["prune"]
        method = f"{label}, transformers {prune['versions']['transformers']}"
        row = {"model": name, "method": method, "who": "peer", "seed": None, "sparsity": prune["target_sparsity"],
               "source": str(path.relative_to(EVAL_DIR.parent))}
        if abs(budget["dense_ppl"] / dense_ppl - 1) > 1e-6:
            rows.append({**row, "skipped": f"measured on other windows (dense perplexity {budget['dense_ppl']:.3f})"})
            continue
        rows.append({**row, "achieved": prune["achieved_sparsity"], "dense_ppl": budget["dense_ppl"],
                     "pruned_ppl": budget["pruned_ppl"], "ratio": budget["ppl_ratio"],
                     "delta_nll": budget["delta_nll"], "delta_nll_se": budget["delta_nll_se"],
                     "params": budget["eval_total_params"], "seconds": prune["prune_wall_s"]})
    return rows


class Progress:
    """Saves every row as it is measured and prints an ETA; on ``--resume`` serves the rows already saved.

    Rows are reused from the interrupted run's ``<name>.partial.json``, or else from the finished
    ``<name>.json``, when every setting the two runs share is equal except those that only choose rows
    (``ROW_SELECTORS``), so a method or seed added later is measured alone beside the rows already there.
    """

    def __init__(self, path: Path, settings: dict[str, Any], total: int, resume: bool, finished: Path | None = None):
        self.path, self.settings, self.total = path, settings, total
        self.saved: dict[tuple, dict[str, Any]] = {}
        source = path if path.exists() else finished
        if resume and source is not None and source.exists():
            data = json.loads(source.read_text())
            earlier = data.get("settings") or data["meta"]
            differ = sorted(key for key in set(earlier) & set(settings) - ROW_SELECTORS if earlier[key] != settings[key])
            if differ:
                sys.exit(f"error: {source} was written with other settings ({', '.join(differ)}); rerun without "
                         "--resume to start over")
            self.saved = {self.key(row): row for row in data["rows"] if row.get("who") in ("hf-prune", "peer", "floor")
                          and row.get("seed") is not None}
            print(f"resuming: {len(self.saved)} rows already measured in {source}", flush=True)
        self.rows: list[dict[str, Any]] = []
        self.done = 0  # planned rows (method x seed x budget) finished, measured now or resumed
        self.started, self.measured_seconds, self.measured = time.perf_counter(), 0.0, 0

    def keep_unplanned(self, model: str) -> None:
        """Carry over the saved rows of ``model`` that this run did not plan (another method list, more costly
        seeds), so a resumed run that adds rows never drops the ones already measured."""
        present = {self.key(row) for row in self.rows if row.get("seed") is not None}
        for key, row in self.saved.items():
            if key[0] == model and key not in present:
                self.add(row, planned=False)

    @staticmethod
    def key(row: dict[str, Any]) -> tuple:
        return row["model"], row["method"], row["seed"], row["sparsity"]

    def lookup(self, model: str, method: str, seed: int, sparsity: float) -> dict[str, Any] | None:
        return self.saved.get((model, method, seed, sparsity))

    def add(self, row: dict[str, Any], seconds: float | None = None, planned: bool = True) -> None:
        """Keep ``row`` (on disk too); ``seconds`` when it was measured now, ``planned=False`` for context rows."""
        self.rows.append(row)
        self.done += planned
        if seconds is not None:
            self.measured_seconds, self.measured = self.measured_seconds + seconds, self.measured + 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the resumed rows this run has not re-added yet go to disk too: a resumed run interrupted before it reaches
        # a model (or a method it no longer lists) must not lose what was measured there
        present = {self.key(row) for row in self.rows if row.get("seed") is not None}
        carried = [row for key, row in self.saved.items() if key not in present]
        self.path.write_text(json.dumps({"settings": self.settings, "rows": self.rows + carried}, indent=1))

    def eta(self) -> str:
        left = self.total - self.done
        if not self.measured or left <= 0:
            return f"{self.done}/{self.total}"
        minutes = left * self.measured_seconds / self.measured / 60
        return f"{self.done}/{self.total}, {(time.perf_counter() - self.started) / 60:.0f} min so far, ~{minutes:.0f} min left"


def costly_seeds(name: str, args: argparse.Namespace) -> list[int]:
    spec = MODELS.get(name)
    count = args.costly_seeds if args.costly_seeds is not None else (spec.costly_seeds if spec else len(args.seeds))
    return args.seeds[:count]


def planned_rows(args: argparse.Namespace) -> int:
    return sum(len(args.sparsities) * sum(1 for label in args.methods for seed in args.seeds
                                          if label not in COSTLY_METHODS or seed in costly_seeds(name, args))
               for name in args.models)


def run_model(name: str, args: argparse.Namespace, progress: Progress) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = MODELS.get(name, ModelUnderTest(Path(name), name, len(args.seeds)))
    if not Path(spec.path).is_dir():
        sys.exit(f"error: {spec.path} not found (for smollm2 run scripts/fetch_smollm2.py first)")
    model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    adapter = get_adapter(model)
    scopes = adapter.scopes(model)
    tokens = fixed_token_set(tokenizer, args.texts[1] if args.off_domain else None, num_windows=args.eval_windows,
                             seq_len=args.eval_seq_len)
    dense = window_nll(model, tokens, batch_size=args.batch_size)
    dense_ppl, params_dense = math.exp(float(dense.mean())), count_parameters(model)
    dense_mc = multiple_choice(model, tokenizer, args.mc_items, args.batch_size) if args.mc_items else {}
    print(f"[{name}] {spec.description}: {params_dense:,} parameters, dense perplexity {dense_ppl:.3f} "
          f"on {tokens.shape[0]} x {tokens.shape[1]} held-out tokens"
          + (f", multiple-choice accuracy {dense_mc['mc_acc']:.3f} on {dense_mc['mc_items']} items" if dense_mc else ""),
          flush=True)
    progress.add({"model": name, "method": "dense", "who": "dense", "seed": None, "sparsity": 0.0, "achieved": 0.0,
                  "dense_ppl": dense_ppl, "pruned_ppl": dense_ppl, "ratio": 1.0, "params": params_dense, **dense_mc}, planned=False)
    for row in torch_pruning_rows(name, dense_ppl):
        progress.add(row, planned=False)
    costly = costly_seeds(name, args)
    for seed in args.seeds:
        todo = [(label, sparsity) for label in args.methods for sparsity in args.sparsities
                if label not in COSTLY_METHODS or seed in costly]
        if all(progress.lookup(name, label, seed, sparsity) for label, sparsity in todo):
            for label, sparsity in todo:
                progress.add(progress.lookup(name, label, seed, sparsity))
            continue
        calibration_source = args.texts[0] if args.off_domain else "reference"
        config = PruningConfig.from_dict(dict(importance="activation", calibration=calibration_source,
                                              seq_len=args.seq_len,
                                              calibration_samples=args.calibration_samples + args.search_rows,
                                              seed=seed))
        # one token stream: the first rows are every method's calibration, the rest only the search's cost rows
        rows = calibration_ids(model, tokenizer, config)
        calibration, held_out = rows[: args.calibration_samples], rows[args.calibration_samples:]
        started = time.perf_counter()
        stats = collect_channel_statistics(model, scopes, calibration, batch_size=args.batch_size, gram=True)
        collect_taylor_statistics(model, scopes, calibration, batch_size=args.batch_size, stats=stats)
        print(f"[{name}] seed {seed}: statistics of {calibration.numel():,} calibration tokens in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        hyperflux = {"steps": args.hyperflux_steps, "regrowth_steps": args.hyperflux_regrowth, "tick_every": 10,
                     "gate_lr": 0.01, "pressure_exponent": 3.0, "batch_size": 4, "row_len": args.hyperflux_row_len}
        search = {"mlp_levels": args.search_mlp_levels, "refine_rounds": args.search_refine_rounds, "batch_size": 4,
                  "search_probe_rows": args.search_probe_rows}
        ctx = Context(model, tokenizer, scopes, adapter.decoder_layers(model), calibration, stats, seed,
                      args.batch_size, held_out, search, hyperflux)
        for label, sparsity in todo:
            saved = progress.lookup(name, label, seed, sparsity)
            if saved:
                progress.add(saved)
                continue
            who, run = METHODS[label]
            base = {"model": name, "method": label, "who": who, "seed": seed, "sparsity": sparsity}
            started = time.perf_counter()
            try:
                outcome = run(ctx, sparsity)
            except Exception as error:  # a budget a method cannot meet is a result, not a crash
                print(f"[{name}] {label} s={sparsity}: skipped ({str(error).splitlines()[0]})", flush=True)
                progress.add({**base, "skipped": str(error).splitlines()[0]}, time.perf_counter() - started)
                continue
            achieved = outcome.achieved if outcome.achieved is not None else masked_sparsity(ctx, outcome.kept)
            with pruned_view(ctx, outcome) as pruned:
                nll = window_nll(pruned, tokens, batch_size=args.batch_size)
                mc = multiple_choice(pruned, tokenizer, args.mc_items, args.batch_size) if args.mc_items and seed in costly else {}
            diff = nll - dense
            row = {
                **base, "achieved": achieved, "dense_ppl": dense_ppl,
                "pruned_ppl": math.exp(float(nll.mean())), "ratio": math.exp(float(diff.mean())),
                "delta_nll": float(diff.mean()), "delta_nll_se": float(diff.std() / math.sqrt(diff.numel())),
                "params": pruned_parameters(ctx, outcome, params_dense), **mc,
                "seconds": time.perf_counter() - started, **outcome.allocation(),
            }
            progress.add(row, row["seconds"])
            print(f"[{name}] {label:36s} s={sparsity:.2f} seed={seed} achieved={achieved:.3f} "
                  f"ppl {dense_ppl:.2f} -> {row['pruned_ppl']:.2f} (x{row['ratio']:.3f}, "
                  f"dNLL {row['delta_nll']:.4f} ± {row['delta_nll_se']:.4f})"
                  + (f" mc {mc['mc_acc']:.3f}" if mc else "") + f" {row['seconds']:.0f}s [{progress.eta()}]", flush=True)
    progress.keep_unplanned(name)


def _cell_rows(rows: list[dict[str, Any]], model: str, method: str, sparsity: float) -> list[dict[str, Any]]:
    return [r for r in rows if r["model"] == model and r["method"] == method and r["sparsity"] == sparsity]


def table_methods(rows: list[dict[str, Any]], model: str) -> list[str]:
    return [m for m in dict.fromkeys(r["method"] for r in rows if r["model"] == model) if m != "dense"]


def _scored_text(args: argparse.Namespace) -> str:
    if args.off_domain:
        return f"corpus test split, source {args.off_domain!r} only: text of a domain calibration never saw"
    return "corpus test split"


def _calibration_text(args: argparse.Namespace) -> str:
    return f" without source {args.off_domain!r}" if args.off_domain else ""


def off_domain_texts(source: str, directory: Path) -> tuple[str, str]:
    """(calibration file: the corpus train split without ``source``; test file: the test split of ``source`` only),
    written into ``directory`` as JSONL, so that quality is also scored on a domain the calibration never saw."""
    written = []
    for split, keep in (("train", lambda doc: doc["source"] != source), ("test", lambda doc: doc["source"] == source)):
        lines = resolve_split_file(None, split).read_text().splitlines()
        kept = [line for line in lines if line.strip() and keep(json.loads(line))]
        if split == "test" and not kept:
            sources = sorted({json.loads(line)["source"] for line in lines if line.strip()})
            sys.exit(f"error: the corpus has no source {source!r}; its sources: {', '.join(sources)}")
        path = directory / f"{split}-{'without' if split == 'train' else 'only'}-{source}.jsonl"
        path.write_text("\n".join(kept) + "\n")
        written.append(str(path))
    return written[0], written[1]


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Perplexity ratio pruned/dense on {args.eval_windows} fixed held-out windows of {args.eval_seq_len} tokens "
        f"({_scored_text(args)}), mean over the calibration seeds measured ({args.seeds}; [1 seed] marks a cell "
        f"measured on the first only); ± is the paired standard error of the mean per-token NLL difference (first "
        f"seed); achieved share of prunable (attention + MLP) parameters removed in brackets. Calibration: "
        f"{args.calibration_samples} x {args.seq_len} tokens of the train split{_calibration_text(args)}, the same "
        f"rows for every method of a seed. Hyperflux: {args.hyperflux_steps} + {args.hyperflux_regrowth} gate steps of 4 x "
        f"{args.hyperflux_row_len} tokens. SmolLM2 = Q4_1-dequantized SmolLM2-135M-Instruct.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        dense = next(r for r in rows if r["model"] == model and r["method"] == "dense")
        lines += [f"### {model}", "", f"Dense: perplexity {dense['dense_ppl']:.3f}, {dense['params']:,} parameters"
                  + (f", multiple-choice accuracy {dense['mc_acc']:.3f} ± {dense['mc_acc_se']:.3f} "
                     f"({dense['mc_items']} items)" if "mc_acc" in dense else "") + ".", "",
                  "| method | " + " | ".join(f"{s:.0%}" for s in args.sparsities) + " |",
                  "|---|" + "---|" * len(args.sparsities)]
        methods = table_methods(rows, model)
        seeds = len(args.seeds)
        for method in methods:
            cells = []
            for sparsity in args.sparsities:
                runs = _cell_rows(rows, model, method, sparsity)
                done = [r for r in runs if "ratio" in r]
                if not done:
                    cells.append("n/a" if not runs else f"not run: {runs[0]['skipped']}")
                    continue
                ratio = sum(r["ratio"] for r in done) / len(done)
                achieved = sum(r["achieved"] for r in done) / len(done)
                note = " [1 seed]" if len(done) == 1 and seeds > 1 and done[0]["seed"] is not None else ""
                cells.append(f"{ratio:.3f} ± {done[0]['delta_nll_se']:.3f} ({100 * achieved:.1f}%){note}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", f"Multiple-choice accuracy (`{NEXT_SENTENCE_TASK}`, lm-eval, first seed; ± binomial SE) and "
                  "parameters of the pruned model:", "",
                  "| method | " + " | ".join(f"{s:.0%} acc | {s:.0%} params" for s in args.sparsities) + " |",
                  "|---|" + "---|---|" * len(args.sparsities)]
        for method in methods:
            cells = []
            for sparsity in args.sparsities:
                done = [r for r in _cell_rows(rows, model, method, sparsity) if "ratio" in r]
                first = done[0] if done else {}
                cells.append(f"{first['mc_acc']:.3f} ± {first['mc_acc_se']:.3f}" if "mc_acc" in first else "n/a")
                cells.append(f"{first['params'] / 1e6:.2f}M" if "params" in first else "n/a")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, model in zip(axes[0], models):
        for index, method in enumerate(table_methods(rows, model)):
            by_budget: dict[float, list[dict[str, Any]]] = {}
            for r in rows:
                if r["model"] == model and r["method"] == method and "ratio" in r:
                    by_budget.setdefault(r["sparsity"], []).append(r)
            points = sorted((sum(r["achieved"] for r in rs) / len(rs), sum(r["ratio"] for r in rs) / len(rs))
                            for rs in by_budget.values())
            who = next(r["who"] for r in rows if r["method"] == method)
            if points:  # tab20: a distinct colour for each of up to 20 methods (the default cycle has 10)
                axis.plot(*zip(*points), marker="o", label=method, color=plt.cm.tab20(index % 20),
                          linestyle="-" if who == "hf-prune" else "--")
        axis.set_title(model)
        axis.set_xlabel("achieved share of prunable parameters removed")
    save_ratio_figure(figure, axes, path)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["reference", "smollm2"],
                        help=f"{', '.join(sorted(MODELS))} or a checkpoint directory")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mc-items", type=int, default=100,
                        help="multiple-choice items scored per model (0: no multiple-choice column)")
    parser.add_argument("--costly-seeds", type=int, default=None,
                        help="seeds (the first N) that get Hyperflux and the multiple-choice task "
                             "(default per model: reference 2, smollm2 1)")
    parser.add_argument("--hyperflux-steps", type=int, default=100, help="Hyperflux steps under pressure")
    parser.add_argument("--hyperflux-regrowth", type=int, default=20, help="Hyperflux steps at zero pressure")
    parser.add_argument("--hyperflux-row-len", type=int, default=128,
                        help="Hyperflux trains on 4 rows of this many calibration tokens per step")
    parser.add_argument("--search-rows", type=int, default=4,
                        help="calibration rows after the scored ones on which the search measures costs")
    parser.add_argument("--search-probe-rows", type=int, default=None,
                        help="local costs: the first N search rows carry the probes to the last layer (default: all)")
    parser.add_argument("--search-mlp-levels", type=int, default=8, help="the search's first grid of MLP widths")
    parser.add_argument("--search-refine-rounds", type=int, default=2, help="the search's refinement rounds")
    parser.add_argument("--off-domain", metavar="SOURCE", default=None,
                        help="calibrate on the corpus train split without this source (e.g. gcide) and score on this "
                             "source's test split only: quality on text of a domain calibration never saw")
    parser.add_argument("--quick", action="store_true", help="reference model, seed 0, 35%%")
    parser.add_argument("--resume", action="store_true", help="keep the rows of an interrupted run with these settings")
    parser.add_argument("--name", default=None, help="output name (default compare[_quick])")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.seeds, args.sparsities = ["reference"], [0], [0.35]
    name = args.name or ("compare_quick" if args.quick else "compare")
    settings = {key: value for key, value in vars(args).items() if key not in ("resume", "name", "out_dir")}
    progress = Progress(args.out_dir / f"{name}.partial.json", settings, planned_rows(args), args.resume,
                        finished=args.out_dir / f"{name}.json")
    torch.manual_seed(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf-prune-compare-") as scratch:
        args.texts = off_domain_texts(args.off_domain, Path(scratch)) if args.off_domain else None
        for model in args.models:
            run_model(model, args, progress)
    rows = progress.rows
    markdown = render(rows, args)
    meta = {**settings, "seconds": time.perf_counter() - started, "machine": platform.platform(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "command": shlex.join(sys.argv),
            "resumed_rows": len(progress.saved)}
    (args.out_dir / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out_dir / f"{name}.md").write_text(markdown)
    plot(rows, args.out_dir / f"{name}.png")
    progress.path.unlink()
    print(markdown)
    print(f"wrote {args.out_dir / name}.{{md,json,png}} in {meta['seconds'] / 60:.1f} min")
    return rows


if __name__ == "__main__":
    main()
