#!/usr/bin/env bash
# Build the "oracle" virtualenv holding the upstream reference package.
# It is used only to regenerate the fixtures in tests/data/upstream/ and is
# kept apart from the project's own environment.
#
#   bash tests/upstream/make_venv.sh            # creates .oracle
#   ORACLE=/tmp/oracle bash tests/upstream/make_venv.sh
set -euo pipefail

ORACLE="${ORACLE:-.oracle}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
UPSTREAM_VERSION="${UPSTREAM_VERSION:-0.5.13}"

python3 -m venv "$ORACLE"
# torch first, on its own, so the local CPU wheel is the one that gets picked.
"$ORACLE/bin/pip" install "torch==${TORCH_VERSION}"
# pin torch again so the resolver never swaps it for another build.
"$ORACLE/bin/pip" install "torch==${TORCH_VERSION}" "litgpt==${UPSTREAM_VERSION}"
"$ORACLE/bin/python" -c "import torch, litgpt; print('oracle ready: torch', torch.__version__)"
