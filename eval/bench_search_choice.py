"""Which groups the search's candidates keep: the importance criterion's, or the ones the compensation itself would
keep at that count (OBS's greedy choice) — the cut makes OBS's choice either way, so the second measures each width
as it will be cut.

The recipe's search (``recipes/search-lstsq.yaml``: units all, OBS, local costs, refit on pruned inputs, 8 search
rows, 8 MLP levels, one refinement round) plans each sparsity both ways (``hf_prune.cut.compensation.base.
SEARCH_MEASURES_CHOICE``); each plan is cut and scored on the corpus **validation** split (this chooses how the
library works: the test split stays unseen), in-domain and on one source (``--off-domain``) the calibration never
saw. 32 x 256 calibration tokens (+ 8 search rows) of the train split without that source, seed 0:

    python eval/bench_search_choice.py --sparsities 0.2 0.35 0.5   # SmolLM2-135M, off-domain gcide; ~2.5 h at one thread

Rows are saved as they are measured (merged with those on disk: one process per ``--variants`` may run beside
another); ``--resume`` keeps them. Writes eval/results/search_choice_<model>.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from bench_common import RESULTS_DIR, TwoDomains, add_cut_arguments, load_float32

from hf_prune import PruningConfig
from hf_prune.adapters import get_adapter
from hf_prune.calibration.statistics import collect_channel_statistics
from hf_prune.cut.apply import apply_pruning
from hf_prune.cut.compensation import base as compensation_base
from hf_prune.plan.planner import calibration_ids, make_plan

#: the recipe's search settings (recipes/search-lstsq.yaml), the calibration's size aside
RECIPE = dict(target="search", units="all", importance="activation", compensate="obs", search_costs="local",
              refit_on="pruned", mlp_levels=8, refine_rounds=1, batch_size=4)
VARIANTS = {"criterion": False, "obs": True}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cut_arguments(parser)
    parser.add_argument("--search-rows", type=int, default=8)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--off-domain", default="gcide")
    parser.add_argument("--resume", action="store_true", help="skip the (variant, sparsity) rows already saved (the settings are not compared: resume with the same flags)")
    args = parser.parse_args(argv)
    name = f"search_choice_{args.model}"
    saved = _saved_rows(RESULTS_DIR / f"{name}.json") if args.resume else []

    model, tokenizer = load_float32(args.model)
    domains = TwoDomains(model, tokenizer, args.off_domain, args.eval_windows, args.batch_size)
    base = dict(RECIPE, calibration=domains.files["calibration"], seq_len=args.seq_len, seed=0,
                calibration_samples=args.calibration_samples + args.search_rows, search_rows=args.search_rows)
    rows = calibration_ids(model, tokenizer, PruningConfig.from_dict(base))
    results = list(saved)
    for variant in args.variants:
        todo = [s for s in args.sparsities if not any(r["variant"] == variant and r["sparsity"] == s for r in saved)]
        if not todo:
            continue
        compensation_base.SEARCH_MEASURES_CHOICE = VARIANTS[variant]
        # fresh statistics per variant: the search caches its first table in them, and the variants' tables differ
        stats = collect_channel_statistics(model, get_adapter(model).scopes(model), rows[:args.calibration_samples],
                                           batch_size=args.batch_size, gram=True)
        for sparsity in todo:
            config = PruningConfig.from_dict({**base, "sparsity": sparsity})
            started = time.perf_counter()
            plan = make_plan(model, config, input_ids=rows, statistics=stats)
            pruned = copy.deepcopy(model)
            apply_pruning(pruned, config, plan)
            seconds = time.perf_counter() - started
            ratios = domains.ratios(pruned)
            results.append({"model": args.model, "sparsity": sparsity, "variant": variant, **ratios,
                            "seconds": seconds})
            results = _merged(_saved_rows(RESULTS_DIR / f"{name}.json"), results)  # rows another process wrote too
            print(f"{args.model} {sparsity:.2f} {variant:9s} in-domain {ratios['in-domain']:.3f} off-domain "
                  f"{ratios['off-domain']:.3f}  plan + cut {seconds:.0f}s", flush=True)
            write(results, args, name)
            del pruned
    write(results, args, name)  # with --resume and nothing left to measure: the page rendered again
    return results


def _saved_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def _merged(saved: list[dict], measured: list[dict]) -> list[dict]:
    """``saved`` rows with ``measured`` ones replacing those of the same variant and sparsity: two processes (one per
    variant) may write the same file."""
    rows = {(r["variant"], r["sparsity"]): r for r in saved}
    rows.update({(r["variant"], r["sparsity"]): r for r in measured})
    return list(rows.values())


def write(results: list[dict], args: argparse.Namespace, name: str) -> None:
    lines = ["# The search's candidates: the criterion's groups or the compensation's own choice", "",
             f"Model {args.model}, the recipe's search (`recipes/search-lstsq.yaml`: units all, OBS, local costs, "
             f"refit on pruned inputs, {args.search_rows} search rows), {args.calibration_samples} x {args.seq_len} "
             f"calibration tokens of the train split without source {args.off_domain!r} (seed 0). Perplexity ratio on "
             f"{args.eval_windows} x 256 tokens of the corpus **validation** split: in-domain (the sources calibration "
             f"drew from) and off-domain (source {args.off_domain!r} only). 'criterion': each candidate keeps the "
             "activation criterion's groups; 'obs': the groups OBS keeps at that count (one greedy removal order per "
             "scope). Plan + cut time on this machine's 2 CPU cores (shared with other runs).", "",
             "Reproduce: `python eval/bench_search_choice.py " + " ".join(
                 ["--model", args.model, "--sparsities", *map(str, sorted({r["sparsity"] for r in results})),
                  "--off-domain", args.off_domain])
             + "`", "",
             "| sparsity | candidates keep | in-domain | off-domain | plan + cut (s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['sparsity']:.0%} | {r['variant']} | {r['in-domain']:.3f} | {r['off-domain']:.3f} | "
              f"{r['seconds']:.0f} |" for r in sorted(results, key=lambda r: (r["sparsity"], r["variant"]))]
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"settings": vars(args), "rows": results}, indent=1,
                                                         default=str))


if __name__ == "__main__":
    main()
