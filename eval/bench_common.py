"""Shared harness of the quality benchmarks: the reference model, a fixed held-out token set, and a
paired perplexity of every pruned copy against the same dense model on exactly those tokens.

Every benchmark prints what it measured and writes it (markdown table, JSON, plot) under
``eval/results/``. Nothing is typed in by hand.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # one printed line per run says more than nested bars; set before tqdm loads

import copy
import json
import math
import statistics as stats_lib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_prune  # noqa: F401  (registers the pruned classes)
from hf_prune.corpus import resolve_split_file
from hf_prune.quality import fixed_token_set, paired_comparison, window_nll

#: the pipeline's console for benchmark runs: their own table says what each run did
QUIET = Console(quiet=True)

EVAL_DIR = Path(__file__).resolve().parent
REFERENCE_DIR = EVAL_DIR / "reference"
RESULTS_DIR = EVAL_DIR / "results"
#: the trained models the one-cut benchmarks (bench_obs_rounds, bench_compensation_ridge) choose from
CUT_MODELS = {"smollm2": EVAL_DIR / "models" / "smollm2-135m", "reference": REFERENCE_DIR}


def add_cut_arguments(parser) -> None:
    """The model, calibration and scoring flags of a benchmark that cuts one trained model at a few budgets."""
    parser.add_argument("--model", choices=list(CUT_MODELS), default="smollm2")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.35, 0.5])
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)


def load_float32(name: str):
    """(model in float32 and eval mode, tokenizer) of one of :data:`CUT_MODELS`."""
    path = CUT_MODELS[name]
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@dataclass
class Bench:
    """The dense reference model and the fixed held-out tokens every pruned copy is scored on."""

    model_dir: Path
    eval_windows: int = 64
    eval_seq_len: int = 256
    batch_size: int = 16
    test_file: Path | None = None  # held-out text of the windows (default: the corpus's test split)
    model: Any = field(init=False)
    tokenizer: Any = field(init=False)
    token_set: torch.Tensor = field(init=False)
    dense_nll_cache: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        torch.set_grad_enabled(True)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.token_set = fixed_token_set(self.tokenizer, self.test_file, num_windows=self.eval_windows,
                                         seq_len=self.eval_seq_len)

    def fresh_copy(self):
        return copy.deepcopy(self.model)

    def compare(self, pruned) -> dict[str, float]:
        """Paired perplexity of ``pruned`` against the dense model, whose window NLLs are computed once."""
        if "nll" not in self.dense_nll_cache:
            self.dense_nll_cache["nll"] = window_nll(self.model, self.token_set, batch_size=self.batch_size)
        return paired_comparison(self.model, pruned, self.token_set, batch_size=self.batch_size,
                                 dense_nll=self.dense_nll_cache["nll"])


def mean_sd(values: list[float]) -> tuple[float, float]:
    return (stats_lib.mean(values), stats_lib.stdev(values) if len(values) > 1 else 0.0)


def write_results(name: str, rows: list[dict[str, Any]], markdown: str, meta: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS_DIR / f"{name}.md").write_text(markdown)
    return RESULTS_DIR / f"{name}.md"


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def save_ratio_figure(figure, axes, path: Path) -> None:
    """The finish every perplexity-ratio plot shares: log y axis, grid, labels, one legend, written to ``path``."""
    import matplotlib.pyplot as plt

    for axis in axes[0]:
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("perplexity ratio pruned / dense")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def ratio_cell(ratios: list[float], achieved: list[float]) -> str:
    """'1.023 ± 0.004 (30.1%)': mean pruned/dense perplexity ratio over seeds, mean achieved sparsity."""
    mean, sd = mean_sd(ratios)
    spread = f" ± {sd:.3f}" if len(ratios) > 1 else ""
    return f"{mean:.3f}{spread} ({100 * stats_lib.mean(achieved):.1f}%)"


def split_by_source(source: str, directory: Path, scored: str = "validation") -> dict[str, str]:
    """JSONL files: the train split without ``source`` (calibration), the ``scored`` split without it (in-domain)
    and the ``scored`` split of ``source`` only (off-domain). Benchmarks that choose constants score the validation
    split; those that report the product's quality, the test split."""
    files = {}
    for name, split, keep in (("calibration", "train", False), ("in-domain", scored, False),
                              ("off-domain", scored, True)):
        lines = [line for line in resolve_split_file(None, split).read_text().splitlines() if line.strip()]
        kept = [line for line in lines if (json.loads(line)["source"] == source) == keep]
        path = directory / f"{name}.jsonl"
        path.write_text("\n".join(kept) + "\n")
        files[name] = str(path)
    return files


@dataclass
class TwoDomains:
    """The corpus **validation** split scored twice (benchmarks that choose how the library works: the test split
    stays unseen): on the sources calibration draws from, and on one ``source`` calibration never sees. ``files``
    also holds the calibration text (the train split without that source)."""

    model: Any
    tokenizer: Any
    source: str
    windows: int = 32
    batch_size: int = 8
    files: dict[str, str] = field(init=False)
    texts: dict[str, torch.Tensor] = field(init=False)
    dense: dict[str, torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self._scratch = tempfile.TemporaryDirectory()
        self.files = split_by_source(self.source, Path(self._scratch.name))
        self.texts = {text: fixed_token_set(self.tokenizer, self.files[text], num_windows=self.windows, seq_len=256)
                      for text in ("in-domain", "off-domain")}
        self.dense = {text: window_nll(self.model, tokens, batch_size=self.batch_size)
                      for text, tokens in self.texts.items()}

    def ratios(self, pruned) -> dict[str, float]:
        """Perplexity ratio pruned / dense on each text."""
        return {text: math.exp(float((window_nll(pruned, tokens, batch_size=self.batch_size) - self.dense[text]).mean()))
                for text, tokens in self.texts.items()}
