"""Write ``eval/RESULTS.md``, the results page, from the comparison results under ``eval/results/``.

Nothing on the page is typed by hand: each table is the one ``eval/compare.py`` (or the Torch-Pruning
runner) wrote, with the command, machine and wall time it recorded, and the reading under each table
is computed here from the same JSON: for every model and budget, hf-prune's best method against the
best peer, as a ratio of degradations (pruned/dense perplexity − 1), next to the paired standard error.

    python eval/results_page.py                                   # every compare_*.json, + Torch-Pruning
    python eval/results_page.py --compare compare_smollm2_seed0   # a chosen subset

It also writes the README's table of the recommended recipe (between its markers) from the full run.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PAGE = Path(__file__).resolve().parent / "RESULTS.md"
TORCH_PRUNING = "torch_pruning_smollm2"
SEARCH = "search"  # methods whose label starts with this are hf-prune's --target search


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def measured_cells(rows: list[dict]) -> dict[tuple, dict[tuple, list[dict]]]:
    """(model, budget) -> (who, method) -> the measured rows of that cell, one per seed."""
    cells: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if "ratio" in row:
            cells[(row["model"], row["sparsity"])][(row["who"], row["method"])].append(row)
    return cells


def reading(rows: list[dict]) -> list[str]:
    """One line per (model, budget): hf-prune's best vs the best peer, from the recorded ratios."""
    lines = []
    for (model, sparsity), methods in sorted(measured_cells(rows).items()):
        means = {key: mean([r["ratio"] for r in runs]) for key, runs in methods.items()}
        ours = {key: ratio for key, ratio in means.items() if key[0] == "hf-prune"}
        peers = {key: ratio for key, ratio in means.items() if key[0] == "peer"}
        if not ours or not peers:
            continue
        best_ours, best_peer = min(ours, key=ours.get), min(peers, key=peers.get)
        ours_ratio, peer_ratio = ours[best_ours], peers[best_peer]
        relative = (ours_ratio - 1) / (peer_ratio - 1) if peer_ratio > 1 else math.inf
        verdict = "beats" if ours_ratio < peer_ratio else "loses to"
        lines.append(f"- {model}, {sparsity:.0%}: hf-prune's best, {best_ours[1]} ({ours_ratio:.3f}), {verdict} the "
                     f"best peer, {best_peer[1]} ({peer_ratio:.3f}); degradation ratio {relative:.2f} (paired SE of "
                     f"hf-prune's per-token NLL difference: {methods[best_ours][0]['delta_nll_se']:.3f} nats)")
        searched = {key: ratio for key, ratio in means.items() if key[0] == "hf-prune" and key[1].startswith(SEARCH)}
        others = {key: ratio for key, ratio in means.items() if key[0] in ("hf-prune", "peer") and key not in searched}
        if searched and others:
            search_key, best_other = min(searched, key=searched.get), min(others, key=others.get)
            ratio = (searched[search_key] - 1) / (others[best_other] - 1) if others[best_other] > 1 else math.inf
            lines.append(f"  - the search ({searched[search_key]:.3f}) against the best other method, {best_other[1]} "
                         f"({others[best_other]:.3f}): degradation ratio {ratio:.2f}")
    return lines


def compare_section(name: str) -> list[str]:
    data = json.loads((RESULTS_DIR / f"{name}.json").read_text())
    meta = data["meta"]
    table = (RESULTS_DIR / f"{name}.md").read_text().strip()
    lines = [f"## `{name}`", "",
             f"Command: `python {meta['command']}` — {meta['seconds'] / 60:.1f} min on {meta['machine']}, "
             f"{meta['cpus']} CPUs, {meta['threads']} torch thread(s); seeds {meta['seeds']}"
             + (f"; {meta['resumed_rows']} rows reused from an earlier sitting with the same settings (`--resume`)"
                if meta.get("resumed_rows") else "") + ".", "", table, ""]
    if (RESULTS_DIR / f"{name}.png").exists():
        lines += [f"![{name}](results/{name}.png)", ""]
    lines += ["Reading (computed from the JSON):", "", *reading(data["rows"]), ""]
    return lines


def torch_pruning_section() -> list[str]:
    path = RESULTS_DIR / f"{TORCH_PRUNING}.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    timeout = data["timeout_check_transformers5"]
    versions = timeout["versions"]
    lines = ["## Torch-Pruning, run as itself", "",
             f"{data['method']}. On transformers {versions['transformers']} (torch-pruning "
             f"{versions['torch-pruning']}) building its dependency groups for SmolLM2 "
             + ("did not finish within" if timeout["timed_out"] else "took") + f" {timeout['timeout_s']:.0f} s. "
             f"Numbers from its own venv: `eval/torch_pruning/README.md`, full page `results/{TORCH_PRUNING}.md`.", "",
             "| requested | achieved | parameters | perplexity ratio | transformers |", "|---|---|---|---|---|"]
    for budget in data["budgets"]:
        prune = budget["prune"]
        lines.append(f"| {prune['target_sparsity']:.0%} | {prune['achieved_sparsity']:.1%} | "
                     f"{budget['eval_total_params']:,} | {budget['ppl_ratio']:.1f} | {prune['versions']['transformers']} |")
    return lines + [""]


README = Path(__file__).resolve().parent.parent / "README.md"
README_MARKERS = ("<!-- recommended-table: written by eval/results_page.py from eval/results/compare.json "
                  "and compare_obs_local_rows8_ridge.json -->", "<!-- /recommended-table -->")
#: the recipe's own run: its settings are the full run's but for the cost rows (8 instead of 2), and only the recipe's
#: method is read from it — the other rows and the peers come from the full run
RECIPE_RUN, RECIPE_METHOD = "compare_obs_local_rows8_ridge", "search + OBS selection, local costs (activation)"
README_METHODS = [  # (compare.py label, what the README calls it)
    (RECIPE_METHOD, "**search + OBS selection, local costs, 8 cost rows** (`recipes/search-lstsq.yaml`)"),
    ("search + least squares (activation)", "**search + least squares**, every candidate measured, 2 cost rows"),
    ("search + least squares on dense inputs (activation)",
     "**search + least squares**, refit on dense inputs (`--refit-on dense`)"),
    ("search (activation)", "search, no compensation"),
    ("uniform, MLP only + least squares (activation)", "uniform MLP-only + least squares"),
    ("uniform, MLP only + least squares on dense inputs (activation)",
     "uniform MLP-only + least squares, refit on dense inputs"),
    ("uniform, MLP only (activation)", "uniform MLP-only (the command-line default)"),
]
MODEL_NAMES = {"smollm2": "SmolLM2-135M (Q4_1 dequantized)", "reference": "reference (5M)"}


def method_table(rows: list[dict], methods: list[tuple[str, str]], complete: bool, cell: Callable,
                 with_peers: bool = False) -> list[str]:
    """A README table: per model, one line per ``(label, shown)`` of hf-prune's ``methods`` measured at every budget
    (``complete``) or at some (the others ``—``), each cell ``cell(runs)`` of the seeds measured; with the best peer."""
    cells = measured_cells([row for row in rows if row.get("seed") is not None])  # re-implemented here, not read
    sparsities = sorted({sparsity for _, sparsity in cells})
    lines = ["| model | method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
             "|---|---|" + "---|" * len(sparsities)]
    for model in [m for m in MODEL_NAMES if any(key[0] == m for key in cells)]:
        first = True
        for label, shown in methods:
            runs = [cells[model, s].get(("hf-prune", label)) for s in sparsities]
            if all(runs) if complete else any(runs):
                lines.append(f"| {MODEL_NAMES[model] if first else ''} | {shown} | "
                             + " | ".join(cell(run) if run else "—" for run in runs) + " |")
                first = False
        peers = [min(((mean([r["ratio"] for r in run]), method) for (who, method), run in cells[model, s].items()
                      if who == "peer"), default=None) for s in sparsities]
        if with_peers and all(peers):
            lines.append("| | best re-implemented peer | " + " | ".join(f"{v:.3f} ({name})" for v, name in peers) + " |")
    return lines


def recommended_table(rows: list[dict]) -> list[str]:
    """The README's table of the recommended recipe against the default and the best peer, from the full run:
    each cell the mean over the seeds measured, with their count."""
    def cell(run: list[dict]) -> str:
        return f"{mean([r['ratio'] for r in run]):.3f} ({len(run)} seed{'s' if len(run) > 1 else ''})"

    return method_table(rows, README_METHODS, complete=True, cell=cell, with_peers=True)


REFIT_MARKERS = ("<!-- refit-table: written by eval/results_page.py from eval/results/compare_refit.json -->",
                 "<!-- /refit-table -->")
REFIT_METHODS = [  # (compare.py label, what the README calls it)
    ("uniform, MLP only + least squares (activation)", "uniform MLP-only + least squares, `--refit-on pruned`"),
    ("uniform, MLP only + least squares on dense inputs (activation)", "the same, `--refit-on dense`"),
    ("uniform, MLP only + least squares, asymmetric (activation)", "the same, `--refit-on asymmetric`"),
    ("search + least squares (activation)", "search + least squares, `--refit-on pruned`"),
    ("search + least squares, one pass per layer (activation)", "the same, one pass per layer (`--layerwise`)"),
]


def refit_table(rows: list[dict]) -> list[str]:
    """The README's table of the three refits, from ``compare_refit.json``: a cell per measured budget, — where a
    method was not measured at that budget."""
    return method_table(rows, REFIT_METHODS, complete=False, cell=lambda run: f"{mean([r['ratio'] for r in run]):.3f}")


def replace_between(markers: tuple[str, str], table: list[str], readme: Path = README) -> None:
    """Replace the table between two README markers (the README keeps its prose, the numbers come from here)."""
    text = readme.read_text()
    start, end = (text.index(marker) for marker in markers)
    readme.write_text(text[: start + len(markers[0])] + "\n" + "\n".join(table) + "\n" + text[end:])


def recommended_rows() -> list[dict]:
    """The rows the README's recommended-recipe table is written from: the full run's, and the recipe's own run's
    rows of the recipe's method."""
    rows = json.loads((RESULTS_DIR / "compare.json").read_text())["rows"]
    recipe = json.loads((RESULTS_DIR / f"{RECIPE_RUN}.json").read_text())["rows"]
    return rows + [row for row in recipe if row.get("method") == RECIPE_METHOD]


def update_readme(rows: list[dict], readme: Path = README) -> None:
    """Replace the recommended-recipe table between the README's markers."""
    replace_between(README_MARKERS, recommended_table(rows), readme)


def recovery_section() -> list[str]:
    """Links to the pages ``eval/bench_recovery.py`` wrote (what a budget of tokens of LoRA / full training, on the
    LM loss or distilled from the dense teacher, buys back after the cut); none while no run has finished."""
    pages = sorted(p.name for p in RESULTS_DIR.glob("recovery_*.md"))
    if not pages:
        return []
    return ["", "## Recovery after the cut", "",
            "Written by `eval/bench_recovery.py` (eval/README.md, section 10): " +
            ", ".join(f"[`{page}`](results/{page})" for page in pages) + ".", ""]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", nargs="+", default=None,
                        help="result names under eval/results (default: every compare_*.json)")
    args = parser.parse_args(argv)
    names = args.compare or sorted((p.stem for p in RESULTS_DIR.glob("compare*.json")
                                    if not p.stem.endswith(".partial")),  # a run not finished is not a table yet
                                   key=lambda name: (name != "compare", name))  # the full run first
    lines = ["# How hf-prune compares", "",
             "Generated by `python eval/results_page.py` from `eval/results/`; no number on this page is typed "
             "by hand. SmolLM2 = SmolLM2-135M-Instruct with **Q4_1-dequantized** weights (the copy that installs "
             "offline). Perplexity ratio = pruned / dense on fixed held-out windows of the corpus test split "
             "(paired); achieved share of prunable parameters removed in brackets. Degradation ratio = "
             "(hf-prune's best − 1) / (best peer − 1): below 1 hf-prune degrades less. Each section is one run of "
             "the script, with its own seeds and budgets: runs are not mixed in one table.", ""]
    for name in names:
        lines += compare_section(name)
    lines += torch_pruning_section()
    lines += recovery_section()
    PAGE.write_text("\n".join(lines))
    print(f"wrote {PAGE}")
    if "compare" in names:
        update_readme(recommended_rows())
        print(f"updated the recommended-recipe table in {README}")
    if "compare_refit" in names:
        replace_between(REFIT_MARKERS, refit_table(json.loads((RESULTS_DIR / "compare_refit.json").read_text())["rows"]))
        print(f"updated the refit table in {README}")
    return PAGE


if __name__ == "__main__":
    main()
