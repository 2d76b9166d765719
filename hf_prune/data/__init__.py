"""Text that ships inside the package, so every target and ``hf-prune eval`` work right after install.

Both files are small seeded samples of the public-domain corpus that ``scripts/prepare_corpus.py``
builds (and the embedded default model was trained on): ``calibration.jsonl`` from its *train*
split, ``heldout.jsonl`` from its *test* split, so evaluation never sees calibration text.
``scripts/prepare_corpus.py --package-sample hf_prune/data`` rewrites them; ``README.md`` here
records their provenance and hashes.

``--calibration builtin`` / ``hf-prune eval --test-file builtin`` name them explicitly; they are the
default only for the embedded default model. Any other model should be calibrated and evaluated on
text of its own domain.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN = "builtin"
DATA_DIR = Path(__file__).resolve().parent
#: the tiny trained Llama that ships in the package: every command works on it right after install
DEFAULT_MODEL_DIR = DATA_DIR.parent / "default_model"
DEFAULT_MODEL_NAME = "hf-prune embedded default (tiny trained Llama)"
CALIBRATION_FILE = DATA_DIR / "calibration.jsonl"
HELDOUT_FILE = DATA_DIR / "heldout.jsonl"
