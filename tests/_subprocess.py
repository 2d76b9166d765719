"""Run Python in a fresh interpreter, optionally with hf_prune made un-importable.

Blocking the import (not merely not importing it) proves that a checkpoint loads for a Hub user who
never installed hf-prune: only the code saved beside the weights can be used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

BLOCK_HF_PRUNE = textwrap.dedent(
    """
    import sys
    class _BlockHfPrune:
        def find_spec(self, name, path=None, target=None):
            if name == "hf_prune" or name.startswith("hf_prune."):
                raise ImportError("hf_prune is blocked in this process")
    sys.meta_path.insert(0, _BlockHfPrune())
    """
)


#: ``hf-prune`` as two CPU processes joined over gloo (``--multi_gpu`` is accelerate's flag for any
#: multi-process launch on one machine)
HF_PRUNE_ON_TWO_PROCESSES = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_prune",
]


def run_python(code: str, *, block_hf_prune: bool = False, timeout: int = 240) -> subprocess.CompletedProcess:
    source = (BLOCK_HF_PRUNE if block_hf_prune else "") + textwrap.dedent(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"subprocess failed:\n{result.stdout}\n{result.stderr}"
    return result


def run_without_hf_prune(checkpoint, input_ids, workdir) -> tuple[str, dict]:
    """Load ``checkpoint`` with ``trust_remote_code=True`` in a process where hf_prune cannot be imported;
    return the loaded class name and its logits and greedy tokens (6 new) on ``input_ids``."""
    from safetensors.torch import load_file, save_file

    save_file({"input_ids": input_ids.contiguous()}, str(workdir / "inputs.safetensors"))
    result = run_python(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        from safetensors.torch import load_file, save_file
        model = AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert "hf_prune" not in sys.modules
        input_ids = load_file({str(workdir / "inputs.safetensors")!r})["input_ids"]
        with torch.no_grad():
            logits = model(input_ids).logits
            tokens = model.generate(input_ids[:1, :5], max_new_tokens=6, do_sample=False)
        save_file({{"logits": logits.contiguous(), "tokens": tokens}}, {str(workdir / "out.safetensors")!r})
        print(type(model).__name__)
        """,
        block_hf_prune=True,
    )
    return result.stdout.strip().splitlines()[-1], load_file(workdir / "out.safetensors")
