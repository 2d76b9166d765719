"""Where an ``hf-prune`` run reaches its peak memory: the Python stack at the moment of the peak.

A memory bound is only worth its terms if one knows which of them are live at the peak. This runs the
``hf-prune`` command given after ``--`` in this process, samples the resident memory every few milliseconds
from a thread, and keeps the main thread's stack each time the resident memory passes its previous maximum
by more than ``--step`` MB. It prints the stacks of the last few rises (the peak's is last), each with the
memory above the baseline (the process once torch, transformers, datasets and hf_prune are imported)::

    HF_HUB_OFFLINE=1 python eval/peak_trace.py -- --model runs/llama-8b-recipe/dense --layerwise \\
        --recipe recipes/search-lstsq.yaml --calibration builtin --calibration-samples 4 --seq-len 128 \\
        --output /tmp/out

Sampling misses peaks shorter than its interval (a transient inside one torch call): the stack then shows the
call that was running when the memory was read, which is the call to look at.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import traceback

import datasets  # noqa: F401  (imported before the baseline, as the memory bench does)
import torch  # noqa: F401
import transformers  # noqa: F401


def resident_mb() -> float:
    with open("/proc/self/status") as handle:
        return int(handle.read().split("VmRSS:")[1].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=float, default=64.0, help="MB above the last recorded rise to record again")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between samples")
    parser.add_argument("--show", type=int, default=6, help="how many of the last rises to print")
    parser.add_argument("--frames", type=int, default=14, help="innermost frames of each stack to print")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then hf-prune's arguments")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    from hf_prune.run.cli import main as hf_prune

    baseline, main_thread = resident_mb(), threading.main_thread().ident
    rises: list[tuple[float, float, list[str]]] = []
    done = threading.Event()

    def sample() -> None:
        recorded, start = baseline, time.perf_counter()
        while not done.is_set():
            now = resident_mb()
            if now > recorded + args.step:
                frame = sys._current_frames().get(main_thread)
                stack = traceback.format_stack(frame)[-args.frames:] if frame is not None else []
                rises.append((time.perf_counter() - start, now - baseline, stack))
                recorded = now
            time.sleep(args.interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        code = hf_prune(command)
    finally:
        done.set()
        sampler.join()
        for seconds, added, stack in rises[-args.show:]:
            print(f"\n=== {added:.0f} MB above the baseline at {seconds:.1f} s ===")
            print("".join(stack).rstrip())
        with open("/proc/self/status") as handle:
            peak = int(handle.read().split("VmHWM:")[1].split()[0]) / 1024
        print(f"\npeak {peak - baseline:.0f} MB above the baseline ({baseline:.0f} MB)")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
