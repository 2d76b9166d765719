"""Loading a model to prune or score, and writing checkpoints.

A written checkpoint is what ``save_pretrained`` makes (config.json, safetensors weights,
generation_config.json, the tokenizer) plus ``modeling_hf_prune.py`` for ``trust_remote_code``
users. It is written into a temporary directory beside the target and renamed into place at the
end, so an interrupted or failed run never leaves a half-written output directory behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..adapters import check_supported
from ..errors import ModelLoadError, OutputDirError, first_line
from ..runtime.distributed import process_state

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtypes(name: str, checkpoint_dtype: Any = None) -> tuple[torch.dtype | str, torch.dtype | None]:
    """(dtype to compute in, dtype to store the result in) for ``--dtype name``, the one place this is decided.

    'auto' computes in float32 on a CPU, where half precision matmuls are many times slower (and float16 is
    poorly supported), and in the checkpoint's own dtype on a GPU ("auto" to ``from_pretrained`` when the config
    does not say); the result is stored in the checkpoint's dtype, so pruning never makes the files larger. An
    explicit dtype is used for both.
    """
    if name != "auto":
        return DTYPES[name], DTYPES[name]
    if isinstance(checkpoint_dtype, str):
        checkpoint_dtype = getattr(torch, checkpoint_dtype, None)
    source = checkpoint_dtype if isinstance(checkpoint_dtype, torch.dtype) and checkpoint_dtype.is_floating_point else None
    return ((source or "auto") if torch.cuda.is_available() else torch.float32), source


def device_map_for(device_map: Any) -> Any:
    """``from_pretrained``'s device_map for ``--device-map``: 'auto', a mapping, or one device (``cuda:1``) for the
    whole model. By default this process's device under ``accelerate launch``, else the first GPU, else the CPU."""
    if device_map is None:
        state = process_state()
        if state.num_processes > 1:
            return {"": state.device}
        return {"": "cuda:0"} if torch.cuda.is_available() else None
    if isinstance(device_map, (str, torch.device)) and str(device_map) != "auto":
        return {"": str(device_map)}
    return device_map


def load_config(name_or_path: str) -> Any:
    """Read only the config, to refuse an unsupported architecture before any weight is loaded."""
    local = Path(name_or_path).expanduser()
    looks_local = local.is_absolute() or name_or_path.startswith((".", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise ModelLoadError(f"model path {name_or_path!r} does not exist or is not a directory; "
                             "pass a local checkpoint directory or a Hub model id")
    try:
        config = AutoConfig.from_pretrained(str(local) if looks_local else name_or_path)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read a model config from {name_or_path!r}: {first_line(error)}") from error
    check_supported(config.model_type)
    return config


def empty_model(name_or_path: str) -> PreTrainedModel:
    """The model of ``name_or_path``'s config with every weight on ``meta``: its shapes, for checks that must come
    before minutes of loading (no memory, no weight file read)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(load_config(name_or_path))


def check_weight_files(name_or_path: str) -> None:
    """Open every safetensors file of a local checkpoint before loading: a truncated or corrupt file is
    named in one line instead of failing deep inside the loader."""
    from safetensors import SafetensorError, safe_open

    directory = Path(name_or_path).expanduser()
    if not directory.is_dir():
        return  # a Hub id: huggingface_hub verifies what it downloads
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(f"weight file {str(path)!r} is corrupt or truncated ({first_line(error)}); "
                                 "copy or download it again") from error


def load_pretrained_model(name_or_path: str, **kwargs: Any) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with safetensors only, and one-line errors for bad input.

    Shared by pruning and ``hf-prune eval``, so both report a missing, unreadable or corrupt
    checkpoint the same way.
    """
    from safetensors import SafetensorError

    check_weight_files(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, use_safetensors=True, **kwargs)
    except (OSError, ValueError, SafetensorError) as error:
        raise ModelLoadError(f"cannot load model weights from {name_or_path!r}: {first_line(error)} "
                             "(hf-prune reads safetensors only, never pickle)") from error


def check_quantization_available(bits: int, flag: str | None = None,
                                 otherwise: str = "drop the flag to train gates on the full-precision base") -> None:
    """A quantized base (or teacher, ``flag`` ``--teacher-bits``) needs bitsandbytes (its CPU backend works too):
    say so before anything is loaded."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(f"{flag or f'--load-in-{bits}bit'} needs bitsandbytes: pip install 'hf-prune[bnb]' "
                             f"(or {otherwise})")


def load_model(
    name_or_path: str, *, dtype: str = "auto", device_map: Any = None, quantize_bits: int | None = None
) -> tuple[PreTrainedModel, Any]:
    """Load a supported causal LM and its tokenizer (None when the checkpoint ships none).

    ``quantize_bits`` (4 or 8) loads the base through bitsandbytes: usable for gate training (frozen
    base), not for surgery. ``device_map`` goes to ``from_pretrained`` as it is (None: the CPU; see
    :func:`device_map_for`).
    """
    config = load_config(name_or_path)
    extra: dict[str, Any] = {}
    if quantize_bits is not None:
        from transformers import BitsAndBytesConfig

        check_quantization_available(quantize_bits)
        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantize_bits == 4, load_in_8bit=quantize_bits == 8,
            bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
            bnb_4bit_quant_type="nf4")
        device_map = device_map or "auto"
    compute, _ = resolve_dtypes(dtype, getattr(config, "dtype", None))
    model = load_pretrained_model(name_or_path, dtype=compute, device_map=device_map, **extra)
    model.eval()
    return model, load_tokenizer(name_or_path)


def load_tokenizer(name_or_path: str) -> Any:
    """The checkpoint's tokenizer, or None (with a warning) when it ships none."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError):
        logger.warning("no tokenizer found at %s; the pruned checkpoint will have none", name_or_path)
        return None


def prepare_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Check the target before any work is done, so a run never fails at its very end."""
    output = Path(output_dir).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise OutputDirError(f"output path {str(output)!r} exists and is a file; choose a directory path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise OutputDirError(f"output directory {str(output)!r} exists and is not empty; "
                             "pass --overwrite (overwrite=True) or choose another --output")
    parent = output.parent
    try:  # the write at the end goes through a staging directory beside the target: try one now
        parent.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".probe", dir=parent)).rmdir()
    except OSError as error:
        raise OutputDirError(f"cannot write into {str(parent)!r} ({error.strerror or first_line(error)}); "
                             "choose another --output") from error
    if output.exists() and not _may_replace(output):
        raise OutputDirError(f"{str(output)!r} belongs to another user in a directory that only lets owners rename "
                             "(sticky bit): it could not be replaced at the end; choose another --output")
    return output


def _may_replace(output: Path) -> bool:
    """Whether this process may rename ``output`` away: not so in a sticky directory (such as /tmp) when neither
    the directory nor ``output`` is this user's."""
    parent = output.parent.stat()
    if not parent.st_mode & stat.S_ISVTX or not hasattr(os, "geteuid"):
        return True
    return os.geteuid() in (0, parent.st_uid, output.stat().st_uid)


@contextmanager
def staged_output(output_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary directory beside ``output_dir`` to write into; moved into place when the block ends
    without an error, deleted when it raises. Nothing half-written is ever left at ``output_dir``; a result that
    cannot be moved into place (a directory another user owns, a mount point) is kept and named in the error."""
    output = prepare_output_dir(output_dir, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_into_place(staging, output)


def _move_into_place(staging: Path, output: Path) -> None:
    """Rename the finished ``staging`` directory to ``output``, replacing an old one; on failure the old output is
    put back, the new one kept at ``staging``, and one line says where."""
    trash = output.with_name(f".{output.name}.old")
    replaced = output.exists()
    try:
        if replaced:
            shutil.rmtree(trash, ignore_errors=True)
            output.rename(trash)
        staging.rename(output)
    except OSError as error:
        old = ""
        if replaced and trash.exists() and not output.exists():
            try:
                trash.rename(output)
            except OSError:
                old = f"; the old {output.name} is in {str(trash)!r}"
        raise OutputDirError(f"cannot move the result into {str(output)!r} ({error.strerror or first_line(error)}); "
                             f"it is complete and kept in {str(staging)!r}: move it there yourself{old}") from error
    shutil.rmtree(trash, ignore_errors=True)


def save_pruned(
    model: PreTrainedModel,
    tokenizer: Any,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    write_extras: Callable[[Path], None] | None = None,
) -> Path:
    """Write the checkpoint atomically (:func:`staged_output`).

    ``write_extras(directory)`` may add files (model card, report, plots) before the rename.
    """
    with staged_output(output_dir, overwrite) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        write_checkpoint_extras(staging, tokenizer, write_extras)
    return Path(output_dir).expanduser().resolve()


def write_checkpoint_extras(directory: Path, tokenizer: Any, write_extras: Callable[[Path], None] | None) -> None:
    """What a checkpoint holds beside the model's own files: the tokenizer, then card, report and plots."""
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    if write_extras is not None:
        write_extras(directory)
