# Sourced at the start of every GPU run on the device machine: installs the carried wheels (the machine has
# torch, triton, tokenizers and numpy but not lightning/jsonargparse) and puts this checkout on PYTHONPATH.
set -e
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
# The image's site-packages hold no usable bytecode cache: every process compiled torch's sources again (import torch
# 3.3-3.6 s, `builtins.compile` 4.9 s of a 10.6 s `litgpt generate` profile, 2026-12-01). Python writes and reads the
# cache under this prefix instead, as it would in a user's own environment.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/pycache
python3 - <<'PY'
import torch
print(f"device: {torch.cuda.get_device_name()} x{torch.cuda.device_count()}, torch {torch.__version__}")
PY
