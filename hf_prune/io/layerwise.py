"""Prune a model that is never whole in memory (``--layerwise``): a 70B model on a machine with a fraction of its size.

Loading. The model is built on ``meta`` (no memory) and handed to accelerate's ``dispatch_model`` with every
decoder layer, the embeddings and the head placed on "disk", the disk being the checkpoint's own safetensors
shards: accelerate's offload hooks read a module's weights from its shard when the module runs and drop them
after. Nothing is copied, and ``from_pretrained``'s own loading pass is skipped (with a disk ``device_map`` it
still touched every tensor: +0.56 GB peak for a 0.6 GB bf16 checkpoint loaded as float32). Calibration and the search then run one decoder layer at a time (``--sequential``), so the
activations of the calibration rows are the only thing held for the whole model.

Cutting. :func:`hf_prune.cut.apply.apply_pruning` visits the layers in order; :class:`LayerByLayer` (its
:class:`~hf_prune.cut.apply.LayerSink`) loads each
one, lets the same compensation and surgery as in memory cut it, hands its tensors to a :class:`ShardWriter`
and frees it. The writer flushes a shard file as soon as it holds one dense layer's worth of bytes, so memory
stays at about one layer loaded, one cut, one shard being filled, plus the calibration activations.

The written checkpoint equals the one the in-memory path writes (``tests/test_layerwise.py``): the same tensors,
config and files; only the shard boundaries differ.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import dispatch_model, init_empty_weights
from accelerate.hooks import remove_hook_from_module
from accelerate.utils import find_tied_parameters
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForCausalLM, GenerationConfig

from ..adapters import get_adapter
from ..errors import ModelLoadError
from ..runtime.offload import resident
from .checkpoint import check_weight_files, load_config

#: transformers' names for a sharded safetensors checkpoint
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def checkpoint_directory(name_or_path: str) -> Path:
    """The local directory holding the checkpoint's safetensors files (a Hub id is downloaded into the
    huggingface_hub cache, or found there)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=["*.safetensors", "*.json"]))
    except Exception as error:  # noqa: BLE001 - every Hub failure is one line for the user
        raise ModelLoadError(f"cannot get the safetensors files of {name_or_path!r}: {error}") from error


def weight_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (from the shard index, or the single file)."""
    index = directory / WEIGHTS_INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: directory / file for name, file in weight_map.items()}
    single = directory / WEIGHTS_NAME
    if not single.is_file():
        raise ModelLoadError(f"{str(directory)!r} holds no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}: --layerwise reads "
                             "the weights straight from safetensors shards; convert the checkpoint once with "
                             "save_pretrained, or drop --layerwise")
    with safe_open(str(single), framework="pt") as handle:
        return {name: single for name in handle.keys()}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def offload_device_map(model: nn.Module, layers: nn.ModuleList, execution_device: torch.device) -> dict[str, Any]:
    """Every decoder layer, and every other module that holds weights, on "disk"; weightless modules (the
    rotary embedding's buffers) on the execution device."""
    layer_ids = {id(layer) for layer in layers}
    device_map: dict[str, Any] = {}

    def place(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if id(child) in layer_ids or not any(id(m) in layer_ids for m in child.modules()):
                has_weights = next(child.parameters(), None) is not None
                device_map[path] = "disk" if has_weights else str(execution_device)
            else:  # holds the layers: place its children one by one
                place(child, f"{path}.")
        if next(module.parameters(recurse=False), None) is not None:
            raise ModelLoadError(f"{type(module).__name__} holds weights of its own beside its decoder layers; "
                                 "--layerwise cannot place them")

    place(model, "")
    return device_map


#: where a weight of an offloaded model is stored: (safetensors file, name in that file)
StoredTensors = dict[str, tuple[Path, str]]


def load_offloaded(name_or_path: str, dtype: torch.dtype,
                   device: torch.device | None = None) -> tuple[nn.Module, StoredTensors]:
    """The model of ``name_or_path`` with every weight left in its checkpoint shards until used, and where each
    weight is stored.

    ``dtype`` is the compute dtype: accelerate converts each tensor when it loads it. ``device`` is where layers
    run (default: the first GPU, else the CPU).
    """
    config = load_config(name_or_path)
    directory = checkpoint_directory(name_or_path)
    check_weight_files(str(directory))  # a truncated shard is named now, not when its layer is first read
    files = weight_files(directory)
    device = device or torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # from_pretrained ties after loading; a tied head then shares the embedding's weight
    model.name_or_path = name_or_path
    try:  # from_pretrained reads it too; from_config would derive one from the model config
        model.generation_config = GenerationConfig.from_pretrained(name_or_path)
    except OSError:
        pass
    stored = {name: name for name in model.state_dict()}
    for group in find_tied_parameters(model):  # a tied head is stored once, under one of its names
        kept = next((name for name in group if name in files), None)
        for name in group:
            stored[name] = kept or name
    missing = [name for name in stored.values() if name not in files]
    if missing:
        raise ModelLoadError(f"{name_or_path!r} lacks {len(missing)} weights the model needs (first: {missing[0]}); "
                             "is it a complete safetensors checkpoint of this config?")
    index = {name: {"safetensors_file": str(files[source]), "weight_name": source, "dtype": _dtype_name(dtype)}
             for name, source in stored.items()}
    device_map = offload_device_map(model, get_adapter(model).decoder_layers(model), device)
    big_modeling = logging.getLogger("accelerate.big_modeling")
    level = big_modeling.level  # it warns that the weights are offloaded: here that is the point
    big_modeling.setLevel(logging.ERROR)
    try:
        model = dispatch_model(model, device_map=device_map, main_device=str(device), offload_index=index,
                               offload_dir=str(Path(next(iter(files.values()))).parent), force_hooks=True)
    finally:
        big_modeling.setLevel(level)
    return model.eval(), {name: (files[source], source) for name, source in stored.items()}


class ShardWriter:
    """Write tensors into safetensors shards as they arrive, and the index at the end (transformers' layout:
    ``model-00001-of-0000N.safetensors`` + ``model.safetensors.index.json``, or one ``model.safetensors``).

    A shard is flushed once adding the next group of tensors would take it past ``max_shard_bytes``, so at most
    one shard is held. Shards are numbered as they are flushed and renamed when the total is known.
    """

    def __init__(self, directory: str | os.PathLike, max_shard_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """Add a group of tensors that belongs in one shard (a decoder layer's)."""
        size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending.update(tensors)
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        number = len(self._shards) + 1
        save_file(self._pending, str(self.directory / f"model-{number:05d}.partial"), metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self, destination: str | os.PathLike) -> None:
        """Write the last shard and move every shard, under its final name, with the index into ``destination``.

        The shards are written into a directory of their own (``self.directory``) because transformers'
        ``save_pretrained``, which writes the config beside them, deletes weight files it did not write.
        """
        if self._pending or not self._shards:
            self._flush()
        destination = Path(destination)
        count = len(self._shards)
        weight_map = {}
        for number, names in enumerate(self._shards, start=1):
            final = WEIGHTS_NAME if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"
            (self.directory / f"model-{number:05d}.partial").rename(destination / final)
            weight_map.update({name: final for name in names})
        self.directory.rmdir()
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (destination / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


class LayerByLayer:
    """What :func:`hf_prune.cut.apply.apply_pruning` calls around each decoder layer of an offloaded model:
    the layer's weights are loaded for the cut, its tensors written after it, and then freed.

    ``dtype`` is the dtype the tensors are written in (the checkpoint's, when the work was done in float32).
    """

    def __init__(self, model: nn.Module, stored: StoredTensors, writer: ShardWriter, dtype: torch.dtype) -> None:
        self.model = model
        self.stored = stored
        self.writer = writer
        self.dtype = dtype
        self._names = {id(module): name for name, module in model.named_modules()}
        # accelerate's hooks give each module a parameter of its own whenever they load or drop weights,
        # which unties a tied head: tie it again, so the head is counted and written once
        model.tie_weights()

    @contextmanager
    def layer(self, layer: nn.Module) -> Iterator[None]:
        """Inside: ``layer`` holds real weights. After: its (cut) tensors are written and dropped."""
        prefix = self._names[id(layer)] + "."
        with resident([layer]):
            yield
            self.writer.add({prefix + name: self._stored(tensor) for name, tensor in layer.state_dict().items()})
        layer.to("meta")  # what surgery made (sliced Linears, compensation biases); the hooks dropped the rest

    def write_outside(self, layers: nn.ModuleList) -> None:
        """Write everything outside the decoder layers (embeddings, final norm, head), a tied head once.

        Pruning does not change them: they are copied from the checkpoint one at a time in its dtype, not
        loaded in the compute dtype (a 128k-vocabulary embedding is 1 GB in float32 for a 1B model).
        """
        self.model.tie_weights()  # a forward since __init__ (the refit's walk) untied it again
        layer_ids = {id(module) for layer in layers for module in layer.modules()}
        names = [name for name, _ in self.model.named_parameters()  # while tied: a shared weight is named once
                 if id(self.model.get_submodule(name.rpartition(".")[0])) not in layer_ids]
        for name in names:
            path, stored_name = self.stored[name]
            with safe_open(str(path), framework="pt") as handle:
                self.writer.add({name: self._stored(handle.get_tensor(stored_name))})

    def _stored(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        return tensor.contiguous()


def dense_layer_bytes(layers: nn.ModuleList, dtype: torch.dtype) -> int:
    """Bytes of the largest decoder layer in ``dtype``: the shard size that keeps one layer's worth in memory."""
    element = torch.empty((), dtype=dtype).element_size()
    return max(sum(p.numel() for p in layer.parameters()) * element for layer in layers)


def finish_meta_model(model: nn.Module, dtype: torch.dtype, info: dict[str, Any]) -> None:
    """Make the cut model (all on ``meta`` now) ready for ``save_pretrained(state_dict={})``, which writes its
    config files: accelerate's hooks off, the stored dtype and the pruning summary in the config."""
    remove_hook_from_module(model, recurse=True)
    model.__dict__.pop("hf_device_map", None)  # nothing is offloaded any more: save_pretrained need not warn
    model.to(dtype)  # on meta this only sets the dtype the config records
    model.config.hf_prune = info
