#!/usr/bin/env bash
# Makes the folders that benchmarks/gpu.sh's device calls carry (carry [".whl", ".peer", ".gpu"]), on a machine that
# reaches PyPI (the GPU machine reaches nothing). From the repository root:
#
#   bash benchmarks/gpu_carry.sh [CORPUS_DIR]
#
#   .whl/   what the GPU image (Python 3.12, torch, transformers, accelerate, httpx, pandas, pyarrow, ...) lacks for our
#           commands: jsonargparse; lm-eval and the packages it imports (evaluate); fastapi, uvicorn (with uvloop and
#           httptools, as our install has them), pydantic and theirs (serve; upstream's server gets the same).
#           benchmarks/gpu_setup.sh installs them into /tmp/site.
#   .peer/  upstream litgpt 0.5.13 with what it needs beyond the image (its own jsonargparse, at most 4.41; litserve,
#           fastapi, uvicorn, pyzmq, ... for `litgpt serve`), installed alone into /tmp/peersite (generate, serve).
#   .gpu/   corpus.tar.xz of CORPUS_DIR's corpus/, instruct/ and tokenizers/ (an offline corpus, as
#           `python3 benchmarks/offline_corpus.py --out DIR --tokenizers` writes it), when CORPUS_DIR is given.
#
# Wheels are for CPython 3.12 on x86-64 Linux, one version of each package per folder (two stop the install). The
# folders are git-ignored; together with the tree they must stay under the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PLATFORM=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux1_x86_64)
SERVER=(fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 typing-extensions==4.16.0 opentelemetry-api==1.45.3 uvicorn==0.55.0
        uvloop==0.23.0 httptools==0.9.0)
OURS=(jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 "${SERVER[@]}"
      lm-eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 more-itertools==11.2.1
      pytablewriter==1.2.1 dataproperty==1.1.1 mbstrdecoder==1.1.5 chardet==6.0.0.post1 pathvalidate==3.3.1
      tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 pytz==2026.6)
PEER=(litgpt==0.5.13 jsonargparse==4.41.0 docstring-parser==0.18.0 typeshed-client==2.15.0 litserve==0.2.19
      pyzmq==27.3.0 "${SERVER[@]}")

fetch() {  # DIR PACKAGE...: download, then refuse two versions of one package
  local dir=$1; shift
  mkdir -p "$dir"
  python3 -m pip download -q "${PLATFORM[@]}" -d "$dir" "$@"
  local twice
  twice=$(ls "$dir"/*.whl | xargs -n1 basename | sed -E 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
  [ -z "$twice" ] || { echo "gpu_carry.sh: $dir holds two versions of: $twice; remove the older" >&2; exit 1; }
}
fetch .whl "${OURS[@]}"
fetch .peer "${PEER[@]}"
if [ $# -gt 0 ] && [ ! -f .gpu/corpus.tar.xz ]; then
  mkdir -p .gpu
  tar -C "$1" -cf - corpus instruct tokenizers | xz -6 > .gpu/corpus.tar.xz
fi
du -sh .whl .peer .gpu 2>/dev/null || true
