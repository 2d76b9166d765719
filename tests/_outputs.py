"""What ``hf-prune`` writes on the embedded default, as a comparable snapshot.

The snapshot of one run is every file of its output directory, reduced to what must not change when the code
is reorganised: each tensor's shape, dtype, bytes (sha256) and a few random projections of its values (so a
machine whose float arithmetic differs in the last bit still compares by value); JSON and Markdown with the
wall-clock timings left out; every other file by its bytes. ``modeling_hf_prune.py`` is left out: it is the
package's code, copied beside the weights, and its loading is tested on its own (both reload paths).

``python -m tests._outputs --write tests/fixtures/outputs.json`` wrote the fixture before the package was
reorganised (HEAD 87a67ab); ``tests/test_outputs_unchanged.py`` runs the same commands and compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import tempfile
import zlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

#: case name -> the flags of one ``hf-prune`` run on the embedded default (shipped calibration text)
CASES: dict[str, list[str]] = {
    "uniform": ["--sparsity", "0.5"],
    "emp_fluctuation_bias": ["--target", "emp", "--units", "all", "--importance", "fluctuation", "--compensate", "bias",
                             "--refit-on", "dense", "--sparsity", "0.3"],
    "emp_raw_beta": ["--target", "emp", "--beta", "1.0", "--calibration-samples", "16"],
    "taylor_attention": ["--units", "attention", "--importance", "taylor", "--sparsity", "0.2",
                         "--calibration-samples", "16"],
    "search_lstsq": ["--target", "search", "--compensate", "lstsq", "--refit-on", "dense", "--sparsity", "0.35",
                     "--calibration-samples", "16",
                     "--seq-len", "128", "--search-rows", "2", "--refine-rounds", "1"],
    "hyperflux": ["--target", "hyperflux", "--units", "all", "--sparsity", "0.3", "--steps", "30", "--tick-every", "5",
                  "--regrowth-steps", "5", "--calibration-samples", "16", "--seq-len", "128"],
    "uniform_shapes": ["--sparsity", "0.3", "--uniform-shapes"],
    "layerwise_emp": ["--layerwise", "--target", "emp", "--units", "all", "--compensate", "bias",
                      "--refit-on", "dense", "--sparsity", "0.4"],
    "emp_lstsq_asymmetric": ["--target", "emp", "--units", "all", "--compensate", "lstsq", "--refit-on", "asymmetric",
                             "--sparsity", "0.4", "--calibration-samples", "16", "--seq-len", "128"],
    "layerwise_search_lstsq": ["--layerwise", "--target", "search", "--compensate", "lstsq", "--sparsity", "0.35",
                               "--calibration-samples", "16", "--seq-len", "128", "--search-rows", "2",
                               "--refine-rounds", "1"],
    "lora_and_gate": ["--target", "emp", "--sparsity", "0.3", "--recover", "lora", "--lora-steps", "4",
                      "--recover-samples", "8", "--recover-eval-rows", "2", "--min-retention", "0.5",
                      "--eval-limit", "8"],
}

#: keys whose values are wall-clock times: they differ from run to run
TIMING_KEYS = re.compile(r"(^|_)seconds$")
#: a duration as the card and the terminal print it ("in 1.2s", "(3.4s)")
DURATION = re.compile(r"\d+(\.\d+)?s\b")
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")
PROJECTIONS = 4
LEFT_OUT = {"modeling_hf_prune.py"}
#: copied from the source model as they are: compared by their bytes, not kept whole in the fixture
COPIED = {"tokenizer.json"}


def run_case(flags: list[str], output: Path) -> int:
    """``hf-prune FLAGS --output OUTPUT`` in this process, through the installed command's entry point."""
    (command,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "hf-prune"]
    return command.load()([*flags, "--output", str(output)])


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_timings(item) for key, item in value.items() if not TIMING_KEYS.search(str(key))}
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


def _tensor_facts(name: str, tensor) -> dict[str, Any]:
    import torch

    values = tensor.detach().to(torch.float64).flatten()
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    directions = torch.randn(PROJECTIONS, values.numel(), generator=generator, dtype=torch.float64)
    return {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."),
            "sha256": hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest(),
            "norm": float(values.norm()), "projections": (directions @ values).tolist()}


def snapshot_file(path: Path, workdir: Path) -> Any:
    """One file's snapshot; the run's directory is written as ``<workdir>`` wherever text names it."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {name: _tensor_facts(name, tensor) for name, tensor in sorted(load_file(str(path)).items())}
    if path.suffix in (".json", ".md") and path.name not in COPIED:
        text = path.read_text().replace(str(workdir), "<workdir>")
        return _without_timings(json.loads(text)) if path.suffix == ".json" else DURATION.sub("<duration>", text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot_directory(directory: Path, workdir: Path) -> dict[str, Any]:
    return {str(path.relative_to(directory)): snapshot_file(path, workdir) for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name not in LEFT_OUT}


def snapshot_case(flags: list[str], workdir: Path) -> dict[str, Any]:
    output = workdir / "out"
    status = run_case(flags, output)
    return {"status": status, "files": snapshot_directory(output, workdir)}


def _close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9 + 1e-5 * scale)


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Where ``actual`` differs from ``expected``: exact for structure and text, by value for numbers (a
    machine with other float arithmetic may differ in the last bits), by value for tensors whose bytes differ."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if {"sha256", "projections"} <= set(expected):
            return _tensor_differences(expected, actual, where)
        found = [f"{where}/{key}: missing" for key in expected if key not in actual]
        found += [f"{where}/{key}: unexpected" for key in actual if key not in expected]
        for key in expected.keys() & actual.keys():
            found += differences(expected[key], actual[key], f"{where}/{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, expected {len(expected)}"]
        return [d for index, (a, b) in enumerate(zip(expected, actual)) for d in differences(a, b, f"{where}[{index}]")]
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return [] if _close(expected, float(actual), abs(expected)) else [f"{where}: {actual!r}, expected {expected!r}"]
    if isinstance(expected, str) and isinstance(actual, str) and expected != actual and "\n" in expected:
        return _text_differences(expected, actual, where)
    return [] if expected == actual else [f"{where}: {actual!r}, expected {expected!r}"]


def _tensor_differences(expected: dict, actual: dict, where: str) -> list[str]:
    if (expected["shape"], expected["dtype"]) != (actual["shape"], actual["dtype"]):
        return [f"{where}: {actual['dtype']}{actual['shape']}, expected {expected['dtype']}{expected['shape']}"]
    if expected["sha256"] == actual["sha256"]:
        return []
    # other bytes: equal values up to float rounding still compare equal (projections scale with the norm)
    scale = max(expected["norm"], 1e-12)
    pairs = [(expected["norm"], actual["norm"]), *zip(expected["projections"], actual["projections"])]
    if all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4 * scale) for a, b in pairs):
        return []
    return [f"{where}: values differ (norm {actual['norm']:.6g}, expected {expected['norm']:.6g})"]


def _text_differences(expected: str, actual: str, where: str) -> list[str]:
    """Text equal word for word, numbers equal to the digits printed (up to one unit in the last place)."""
    if NUMBER.sub("#", expected) != NUMBER.sub("#", actual):
        import difflib

        diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(), lineterm="", n=0)
        return [f"{where}: text differs:\n" + "\n".join(list(diff)[:20])]
    found = []
    for a, b in zip(NUMBER.findall(expected), NUMBER.findall(actual)):
        x, y = float(a.replace(",", "")), float(b.replace(",", ""))
        last_place = 10.0 ** -len(a.partition(".")[2]) if "." in a else 1.0
        if abs(x - y) > last_place * 1.01 and not _close(x, y, abs(x)):
            found.append(f"{where}: number {b}, expected {a}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, required=True, help="the fixture file to write")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    snapshots = {}
    for name in args.cases:
        with tempfile.TemporaryDirectory(prefix=f"hf-prune-{name}-") as workdir:
            snapshots[name] = snapshot_case(CASES[name], Path(workdir))
            print(f"{name}: exit {snapshots[name]['status']}, {len(snapshots[name]['files'])} files", flush=True)
    args.write.parent.mkdir(parents=True, exist_ok=True)
    args.write.write_text(json.dumps(snapshots, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
