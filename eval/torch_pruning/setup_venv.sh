#!/usr/bin/env bash
# Creates eval/torch_pruning/.venv (git-ignored): the separate venv in which Torch-Pruning's LLM
# recipe runs. torch 2.13.0 (CPU wheel from the local cache) is installed FIRST so that pip never
# pulls a CUDA torch; then torch-pruning and the transformers release it works with.
# Also installs torch-pruning alone (no deps) into .venv/tp_only, which the transformers-5.x
# timeout check puts on PYTHONPATH of the *main* venv (the main venv itself is not modified).
#
#   bash eval/torch_pruning/setup_venv.sh [TRANSFORMERS_VERSION]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
TF_VERSION="${1:-${TF_VERSION:-4.53.3}}"  # newest release that works (records/bisect.json)
TP_VERSION="${TP_VERSION:-1.6.1}"
PY="${PYTHON:-python3}"
if [ ! -x "$HERE/.venv/bin/python" ]; then
  "$PY" -m venv "$HERE/.venv"
fi
V="$HERE/.venv/bin/python"
"$V" -m pip install -q "torch==2.13.0"
"$V" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; assert torch.version.cuda is None, 'CUDA torch'"
"$V" -m pip install -q "torch==2.13.0" "torch-pruning==$TP_VERSION" "transformers==$TF_VERSION" safetensors numpy
"$V" -c "import torch; assert torch.__version__.startswith('2.13.0') and torch.version.cuda is None, torch.__version__"
"$V" -m pip install -q --no-deps --target "$HERE/.venv/tp_only" "torch-pruning==$TP_VERSION"
"$V" -m pip list 2>/dev/null | grep -i -E '^(torch|torch-pruning|transformers|safetensors|tokenizers|numpy) '
