"""How strongly, and towards what, least squares / OBS is damped: the relative ridge λ = damping × mean diagonal of
the kept channels' second moments, pulling the refit kept columns towards zero (plain ridge regression) or towards
their dense values (the objective OBS's damped error already assumes when it chooses the groups).

A refit fits the calibration text; how well it carries to other text is what the ridge trades. So each variant is
scored twice on the corpus **validation** split (this chooses constants: the test split stays unseen): on the sources
the calibration drew from, and on one source (``--off-domain``) the calibration never saw. One plan per sparsity
(EMP, activation importance; the plan does not depend on the ridge), refit on the pruned inputs, 32 x 256 calibration
tokens of the train split without the off-domain source (seed 0):

    python eval/bench_compensation_ridge.py                       # SmolLM2-135M, 35% and 50%, off-domain gcide

Writes eval/results/compensation_ridge_<model>[_<refit-on>].{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

from bench_common import RESULTS_DIR, TwoDomains, add_cut_arguments, load_float32

from hf_prune import PruningConfig
from hf_prune.adapters import get_adapter
from hf_prune.calibration.statistics import collect_channel_statistics
from hf_prune.cut.apply import apply_pruning
from hf_prune.cut.compensation import lstsq
from hf_prune.plan.planner import calibration_ids, make_plan



def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cut_arguments(parser)
    parser.add_argument("--dampings", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--towards", nargs="+", choices=["zero", "dense"], default=["zero", "dense"])
    parser.add_argument("--compensate", default="obs", choices=["lstsq", "obs"])
    parser.add_argument("--refit-on", default="pruned", choices=["pruned", "asymmetric", "dense"])
    parser.add_argument("--off-domain", default="gcide")
    args = parser.parse_args(argv)

    model, tokenizer = load_float32(args.model)
    domains = TwoDomains(model, tokenizer, args.off_domain, args.eval_windows, args.batch_size)
    base = dict(target="emp", importance="activation", calibration=domains.files["calibration"], seq_len=args.seq_len,
                calibration_samples=args.calibration_samples, seed=0, compensate=args.compensate,
                refit_on=args.refit_on)
    rows = calibration_ids(model, tokenizer, PruningConfig.from_dict(base))
    stats = collect_channel_statistics(model, get_adapter(model).scopes(model), rows, batch_size=args.batch_size,
                                       gram=True)
    results = []
    for sparsity in args.sparsities:
        config = PruningConfig.from_dict({**base, "sparsity": sparsity})
        plan = make_plan(model, config, input_ids=rows, statistics=stats)
        for towards in args.towards:
            for damping in args.dampings:
                lstsq.DAMPING, lstsq.RIDGE_TOWARDS = damping, towards
                pruned = copy.deepcopy(model)
                started = time.perf_counter()
                apply_pruning(pruned, config, copy.deepcopy(plan))
                seconds = time.perf_counter() - started
                ratios = domains.ratios(pruned)
                results.append({"model": args.model, "sparsity": sparsity, "towards": towards, "damping": damping,
                                **ratios, "cut_seconds": seconds})
                print(f"{args.model} {sparsity:.2f} towards {towards:5s} damping {damping:<5g} in-domain "
                      f"{ratios['in-domain']:.3f} off-domain {ratios['off-domain']:.3f}  cut {seconds:.0f}s", flush=True)
                del pruned
    write(results, args)
    return results


def write(results: list[dict], args: argparse.Namespace) -> None:
    lines = ["# Least squares / OBS: the ridge's strength and centre", "",
             f"Model {args.model}, EMP plan (activation importance), `--compensate {args.compensate} --refit-on "
             f"{args.refit_on}`, {args.calibration_samples} x {args.seq_len} calibration tokens of the train split "
             f"without source {args.off_domain!r} (seed 0). Perplexity ratio on {args.eval_windows} x 256 tokens of the "
             f"corpus **validation** split: in-domain (the sources calibration drew from) and off-domain (source "
             f"{args.off_domain!r} only). λ = damping × the kept channels' mean second moment; 'dense' pulls the "
             "refit kept columns towards their dense values, 'zero' towards zero. Cut time on this machine's 2 CPU "
             "cores (shared with other runs).", "",
             "Reproduce: `python eval/bench_compensation_ridge.py " + " ".join(
                 ["--model", args.model, "--sparsities", *map(str, args.sparsities), "--dampings",
                  *map(str, args.dampings), "--towards", *args.towards, "--compensate", args.compensate, "--refit-on", args.refit_on,
                  "--off-domain", args.off_domain]) + "`", "",
             "| sparsity | towards | damping | in-domain | off-domain | cut (s) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['sparsity']:.0%} | {r['towards']} | {r['damping']:g} | {r['in-domain']:.3f} | "
              f"{r['off-domain']:.3f} | {r['cut_seconds']:.0f} |" for r in results]
    name = f"compensation_ridge_{args.model}" + ("" if args.refit_on == "pruned" else f"_{args.refit_on}")
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"settings": vars(args), "rows": results},
                                                                    indent=1, default=str))


if __name__ == "__main__":
    main()
