#!/usr/bin/env bash
# Installs the build and run dependencies from Debian/Ubuntu packages.
# The CUDA toolkit and NCCL are not installed here (see README: GPU).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends \
    build-essential pkg-config ca-certificates curl \
    libcjson-dev libopenblas-openmp-dev liblapacke-dev \
    libopenmpi-dev openmpi-bin \
    python3 python3-numpy python3-matplotlib
