#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (nothing here is needed for CI or the tests):
#   1. the GPU figures of the speed benchmarks (maps: benchmarks/map_speed.py --device cuda;
#      TV-RL and the PSF-size refinement: benchmarks/deconv_speed.py --device cuda --refine);
#   2. the test suite with a CUDA device present: the CUDA-only tests run, and every
#      component left to choose its device (device=None) picks the GPU. The GUI tests
#      (pytest-qt, and the one recording test that needs a QApplication) are left out: the
#      GPU machine's image has no Qt.
# Run from the repository root of an installed checkout:
#   bash benchmarks/gpu.sh [OUT_DIR]      (PYTHON=python3 WORKERS=6 to choose)
set -u
out="${1:-gpu_out}"
mkdir -p "$out"
py="${PYTHON:-python}"
export PYTHONUNBUFFERED=1 QT_QPA_PLATFORM=offscreen
$py -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee "$out/map_speed_cuda.txt"
$py benchmarks/map_speed.py --device cuda --repeats 50 2>&1 | tee -a "$out/map_speed_cuda.txt"
$py benchmarks/deconv_speed.py --device cuda --refine 2>&1 | tee "$out/deconv_speed_cuda.txt"
# warnings shown, not raised: the GPU machine may hold other versions of numpy, torch ...;
# one line per test as it ends (-v), so a run cut short still names its failures
$py -m pytest -v -p no:cacheprovider --ignore=tests/test_gui_panel.py -n "${WORKERS:-4}" \
    --deselect tests/test_record_session.py::test_headless_core_records_while_a_qt_app_exists \
    -W default -rfEs 2>&1 | tee "$out/pytest_cuda.txt"
