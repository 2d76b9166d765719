"""Loading a model to prune, turning a sliced model into its pruned class, and writing checkpoints.

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
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .adapters import PrunableScope, check_supported
from .errors import ModelLoadError, OutputDirError, first_line
from .modeling import REMOVED_FIELD, SHAPES_FIELD, pruned_classes_for
from .modeling.modeling_hf_prune import RemovedSublayer

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype | str:
    """'auto' keeps the checkpoint's dtype on a GPU but computes in float32 on a CPU, where half
    precision matmuls are many times slower (and float16 is poorly supported)."""
    if name == "auto":
        return "auto" if torch.cuda.is_available() else torch.float32
    return DTYPES[name]


def restore_checkpoint_dtype(model, source_dtype) -> None:
    """On a CPU, 'auto' computes in float32; the pruned checkpoint is still written in the dtype the
    base checkpoint was stored in, so pruning never makes the files larger."""
    if isinstance(source_dtype, str):
        source_dtype = getattr(torch, source_dtype, None)
    if isinstance(source_dtype, torch.dtype) and source_dtype.is_floating_point and model.dtype != source_dtype:
        model.to(source_dtype)


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


def check_quantization_available(bits: int) -> None:
    """A quantized base needs bitsandbytes (its CPU backend works too): say so before anything is loaded."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(f"--load-in-{bits}bit needs bitsandbytes: pip install 'hf-prune[bnb]' "
                             "(or drop the flag to train gates on the full-precision base)")


def load_model(
    name_or_path: str, *, dtype: str = "auto", device_map: Any = None, quantize_bits: int | None = None
) -> tuple[PreTrainedModel, Any]:
    """Load a supported causal LM and its tokenizer (None when the checkpoint ships none).

    ``quantize_bits`` (4 or 8) loads the base through bitsandbytes: usable for gate training (frozen
    base), not for surgery.
    """
    load_config(name_or_path)
    extra: dict[str, Any] = {}
    if quantize_bits is not None:
        from transformers import BitsAndBytesConfig

        check_quantization_available(quantize_bits)
        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantize_bits == 4, load_in_8bit=quantize_bits == 8,
            bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
            bnb_4bit_quant_type="nf4")
        device_map = device_map or "auto"
    model = load_pretrained_model(name_or_path, dtype=resolve_dtype(dtype), device_map=device_map, **extra)
    model.eval()
    return model, load_tokenizer(name_or_path)


def load_tokenizer(name_or_path: str) -> Any:
    """The checkpoint's tokenizer, or None (with a warning) when it ships none."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError):
        logger.warning("no tokenizer found at %s; the pruned checkpoint will have none", name_or_path)
        return None


def linear_shapes(model: nn.Module, scopes: Iterable[PrunableScope]) -> dict[str, list[int]]:
    """``[out_features, in_features, has_bias]`` of every Linear the scopes cut."""
    shapes = {}
    for scope in scopes:
        for piece in scope.slices:
            linear = model.get_submodule(piece.path)
            shapes[piece.path] = [linear.out_features, linear.in_features, int(linear.bias is not None)]
    return shapes


def removed_sublayers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Module path -> rebuild spec of every sublayer that surgery removed whole."""
    return {path: module.spec() for path, module in model.named_modules() if isinstance(module, RemovedSublayer)}


def as_pruned_model(model: PreTrainedModel, scopes: Iterable[PrunableScope], info: dict[str, Any]) -> PreTrainedModel:
    """Relabel an already sliced model as its family's pruned class, in place.

    The pruned class adds no parameter, buffer or forward logic — it only rebuilds these same shapes
    when constructed by ``from_pretrained`` — so switching the class of the live instance is exact
    and avoids materialising a second copy of a large model. The config becomes the pruned config
    (same values, plus the per-module shapes and the pruning summary) everywhere it is referenced.
    """
    config_cls, model_cls = pruned_classes_for(model.config.model_type)
    new_config = config_with_class(model.config, config_cls, hf_prune=info)
    setattr(new_config, SHAPES_FIELD, linear_shapes(model, scopes))
    setattr(new_config, REMOVED_FIELD, removed_sublayers(model) or None)
    return relabel(model, new_config, model_cls)


#: config keys that name a class or a pruned layout, not the model's hyper-parameters
_CLASS_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", SHAPES_FIELD, REMOVED_FIELD, "hf_prune")


def config_with_class(config: Any, config_cls: type, **values: Any) -> Any:
    """The same hyper-parameters as ``config`` in a config of ``config_cls`` (``values`` override them),
    with the runtime state that ``to_dict()`` leaves out (e.g. the attention implementation chosen at load)."""
    hyper = {key: value for key, value in config.to_dict().items() if key not in _CLASS_KEYS}
    hyper.update(values)
    new_config = config_cls(**hyper)
    for key, value in vars(config).items():
        if key.startswith("_") and key not in hyper:
            setattr(new_config, key, value)
    return new_config


def relabel(model: PreTrainedModel, config: Any, model_cls: type) -> PreTrainedModel:
    """Give ``model`` a new config (everywhere the old one is referenced) and class, in place: no weight moves."""
    old_config = model.config
    for module in model.modules():
        if getattr(module, "config", None) is old_config:
            module.config = config
    model.__class__ = model_cls
    return model


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
    return output


@contextmanager
def staged_output(output_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary directory beside ``output_dir`` to write into; renamed into place when the block ends
    without an error, deleted when it raises. Nothing half-written is ever left at ``output_dir``."""
    output = prepare_output_dir(output_dir, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield staging
        if output.exists():
            trash = output.with_name(f".{output.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            output.rename(trash)
            staging.rename(output)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
