#!/usr/bin/env bash
# Fetches NVRTC (CUDA's run-time compiler) and the CUDA runtime headers from PyPI, pinned and
# checksummed, and unpacks them into a cache folder. No CUDA toolkit, driver or GPU is needed:
# this is what CI uses to compile every kernel in cuda/ (tests/tests/cuda_ptx.rs).
#
#   eval "$(cuda/fetch_nvrtc.sh)"     # exports TANDEM_NVRTC_DIR and TANDEM_CUDA_INCLUDE
#
# Safe to run again: it does nothing when the folder is complete. Prints the export lines on
# stdout and progress on stderr. The folder: $TANDEM_CACHE/nvrtc/<version>, else
# $XDG_CACHE_HOME/tandem/..., else ~/.cache/tandem/... (the model cache's root).
#
# The kernels include no toolkit header (see cuda/common.cuh), so only NVRTC is required;
# the runtime headers (cuda_fp16.h and friends) are unpacked for kernels that may want them
# and exported as TANDEM_CUDA_INCLUDE.
set -euo pipefail

NVRTC_VERSION=12.9.86
RUNTIME_VERSION=12.9.79
NVRTC_WHEEL=nvidia_cuda_nvrtc_cu12-${NVRTC_VERSION}-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
NVRTC_SHA256=210cf05005a447e29214e9ce50851e83fc5f4358df8b453155d5e1918094dcb4
RUNTIME_WHEEL=nvidia_cuda_runtime_cu12-${RUNTIME_VERSION}-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
RUNTIME_SHA256=25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "fetch_nvrtc.sh: the pinned wheels are for Linux x86_64, this is $(uname -s)-$(uname -m)" >&2
  exit 1
fi

cache_root="${TANDEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
dest="$cache_root/nvrtc/$NVRTC_VERSION"
lib="$dest/nvidia/cuda_nvrtc/lib"
include="$dest/nvidia/cuda_runtime/include"

if [ ! -f "$dest/.complete" ]; then
  python=$(command -v python3 || command -v python || true)
  if [ -z "$python" ] || ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "fetch_nvrtc.sh: needs python3 with pip (to download the wheels from PyPI)" >&2
    exit 1
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "fetch_nvrtc.sh: downloading nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION and nvidia-cuda-runtime-cu12==$RUNTIME_VERSION" >&2
  "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --python-version 3.11 --implementation py \
    --dest "$work" \
    "nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION" "nvidia-cuda-runtime-cu12==$RUNTIME_VERSION" >&2
  (cd "$work" && printf '%s  %s\n%s  %s\n' "$NVRTC_SHA256" "$NVRTC_WHEEL" "$RUNTIME_SHA256" "$RUNTIME_WHEEL" | sha256sum --check --quiet >&2)
  rm -rf "$dest.partial"
  mkdir -p "$dest.partial"
  for wheel in "$work/$NVRTC_WHEEL" "$work/$RUNTIME_WHEEL"; do
    "$python" -m zipfile -e "$wheel" "$dest.partial"
  done
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  touch "$dest/.complete"
  echo "fetch_nvrtc.sh: unpacked into $dest" >&2
fi

if [ ! -e "$lib/libnvrtc.so.12" ]; then
  echo "fetch_nvrtc.sh: $lib/libnvrtc.so.12 is missing; delete $dest and run again" >&2
  exit 1
fi
echo "export TANDEM_NVRTC_DIR='$lib'"
echo "export TANDEM_CUDA_INCLUDE='$include'"
