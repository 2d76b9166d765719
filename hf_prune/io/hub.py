"""Publishing a pruned checkpoint on the Hugging Face Hub, through ``huggingface_hub.HfApi``.

The directory that is uploaded is the one written locally (weights, config, tokenizer,
``modeling_hf_prune.py`` for ``trust_remote_code`` users, the model card, report and plot), so what is on
the Hub is byte for byte what the user already has on disk. The token comes from where huggingface_hub
looks for it (``HF_TOKEN``, ``hf auth login``) unless one is passed.

A failure (Hub unreachable, offline mode, no or refused token, bad repo id) is a :class:`HubError` with
one line; the pipeline adds where the local copy is, and the command exits 2 on it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import HfPruneError, first_line
from ..report import PruningReport
from .artifacts import write_run_artifacts
from .checkpoint import save_pruned

logger = logging.getLogger(__name__)


class HubError(HfPruneError):
    """The upload failed; the local checkpoint is untouched."""


def push_folder(
    folder: str | os.PathLike, repo_id: str, *, private: bool | None = None, revision: str | None = None,
    token: str | None = None, commit_message: str = "Upload pruned model (hf-prune)",
    commit_description: str | None = None, create_pr: bool = False,
) -> str:
    """Create ``repo_id`` if needed (and the branch ``revision``), upload ``folder`` into it; returns the
    commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled

    folder = Path(folder)
    api = HfApi(token=token)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo.repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=folder, revision=revision,
                                   commit_message=commit_message, commit_description=commit_description,
                                   create_pr=create_pr, repo_type="model")
    except (HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled, OSError,
            ValueError) as error:
        raise HubError(f"could not push to the Hub repo {repo_id!r} ({first_line(error)}); log in with "
                       "`hf auth login` or set HF_TOKEN and check the repo id") from error
    except _transport_errors() as error:
        raise HubError(f"could not reach the Hub to push {repo_id!r} ({first_line(error)}); upload later with "
                       f"`hf upload {repo_id} <directory>`") from error
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("pushed %s to %s", folder, url)
    return url


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests, by version),
    which it lets through unwrapped when the Hub cannot be reached at all."""
    import importlib

    errors: list[type[BaseException]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def push_pruned_model(
    model: Any, repo_id: str, *, tokenizer: Any = None, private: bool | None = None, revision: str | None = None,
    token: str | None = None, commit_message: str | None = None, commit_description: str | None = None,
    create_pr: bool = False, **unsupported: Any,
) -> str:
    """``model.push_to_hub`` of a pruned model: the same files as ``--push-to-hub`` (checkpoint, tokenizer,
    modeling file, model card, report, plot), the card rebuilt from ``config.hf_prune``.

    The tokenizer is ``tokenizer`` or, when none is passed, the one of the model's source
    (``model.name_or_path``); a model without one is pushed without it, with a warning.
    """
    if unsupported:  # e.g. max_shard_size, tags: refused rather than silently ignored
        raise TypeError(f"push_to_hub of a pruned model does not take {', '.join(sorted(unsupported))}; it takes "
                        "repo_id, tokenizer, private, revision, token, commit_message, commit_description, create_pr")
    info = getattr(model.config, "hf_prune", None)
    if not info:
        raise HubError("this model has no hf-prune report in its config; prune it first (or push it with "
                       "transformers' own push_to_hub)")
    report = PruningReport.from_info(info)
    if tokenizer is None:
        tokenizer = _source_tokenizer(model)
    with tempfile.TemporaryDirectory(prefix="hf-prune-push-") as scratch:
        folder = save_pruned(model, tokenizer, Path(scratch) / "model",
                             write_extras=lambda directory: write_run_artifacts(report, directory, repo_id))
        return push_folder(folder, repo_id, private=private, revision=revision, token=token,
                           commit_message=commit_message or "Upload pruned model (hf-prune)",
                           commit_description=commit_description, create_pr=create_pr)


def _source_tokenizer(model: Any) -> Any:
    from transformers import AutoTokenizer

    source = getattr(model, "name_or_path", None)
    try:
        return AutoTokenizer.from_pretrained(source) if source else None
    except (OSError, ValueError, TypeError):
        logger.warning("no tokenizer found at %s; pushing without one (pass tokenizer=...)", source)
        return None
