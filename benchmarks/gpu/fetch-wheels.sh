#!/usr/bin/env bash
# Here (no GPU, registry access): put the wheels benchmarks/gpu/run.sh installs on the GPU machine
# into .whl/ at the repository root (git-ignored). Then `run` with carry [".whl", "out/focal_clustering_exact"].
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
grep -v '^#' benchmarks/gpu/wheels.txt | grep . | xargs python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl
python3 -m pip wheel -q --no-deps -w .whl grad-cam==1.5.7   # pure Python; PyPI has its sdist only
du -sh .whl
