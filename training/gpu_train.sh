#!/usr/bin/env bash
# The shippable slim ResNet (resnet18-w16, 2.8 MB) for the four PSF models of issue #3,
# trained side by side on one CUDA GPU within one device session: the patches are degraded
# on the GPU (--data-device train), so each run's CPU cost is making source regions
# (--refresh 0.05: 13 new sources per batch of 256 instead of 26).
# Run from the repository root:
#   bash training/gpu_train.sh OUT_DIR       (MINUTES=6.5 THREADS=3 PYTHON=python3 to choose;
#                                              ARCH=spectral-deep for another architecture)
# A run whose GPU data path fails within its first two minutes is started again with its
# patches made by CPU worker processes instead (that is said in its log).
set -u
out="${1:-runs/gpu}"
mkdir -p "$out"
py="${PYTHON:-python}"
minutes="${MINUTES:-6.5}"
threads="${THREADS:-3}"
arch="${ARCH:-resnet18-w16}"
export PYTHONUNBUFFERED=1

common=(--arch "$arch" --amp --batch-size 256 --threads "$threads" --minutes "$minutes"
    --lr-candidates 1e-3,3e-4 --lr-search-steps 40 --val-every 500 --val-batches 8
    --patience 40 --test-batches 8 --bank-size 8192 --refresh 0.05 --reuse 2
    --clean-fraction 0.1 --no-progress)

train() {  # train NAME PSF_MODEL [extra args...]
    local name="$1" model="$2"
    shift 2
    local t0=$SECONDS
    if ! $py -m training.train --psf-model "$model" "${common[@]}" --data-device train \
        --out "$out/$name" --name "$name" "$@" >"$out/$name.out" 2>&1; then
        if ((SECONDS - t0 < 120)); then
            echo "GPU data path failed after $((SECONDS - t0)) s; CPU workers instead" \
                >>"$out/$name.out"
            $py -m training.train --psf-model "$model" "${common[@]}" --workers "$threads" \
                --out "$out/$name" --name "$name" "$@" >>"$out/$name.out" 2>&1
        fi
    fi
}

train zernike1 zernike1 &
train zernike3 zernike3 &
train gaussian1 gaussian1 &
train gaussian2 gaussian2 &
wait
tail -n 2 "$out"/*.out
