#!/usr/bin/env bash
# llama.cpp as the benchmark peer: get a CUDA llama-bench, convert a Qwen3.5 checkpoint to a bf16 GGUF,
# and time decode (tg128 at depths 0/16/512/4096) and prefill (pp512, pp4096, pp32768) on the GPU.
#
# Runs on the (offline) GPU machine from the repository root. It needs the carried artefacts in .carry/
# (see tools/LLAMA_CPP.md for how they are made):
#   .carry/llama.cpp.tar.gz         pruned llama.cpp source (always: the converter and gguf-py come from it)
#   .carry/llama-bench-sm90.tar.gz  prebuilt CUDA llama-bench for sm_90 (optional: without it, or if it does
#                                   not run here, llama-bench is built from the source, ~5 min on 16 cores)
#
# usage: tools/llama_cpp_peer.sh --work DIR --checkpoint DIR --out DIR
#            [--carry DIR] [--reps N] [--jobs N] [--force-build] [--keep-gguf] [--cpu-only]
#
#   --work DIR        scratch directory (source tree, build, GGUF of ~1.5 GB)
#   --checkpoint DIR  Hugging Face layout Qwen3.5 checkpoint: config.json, *.safetensors, tokenizer.json,
#                     tokenizer_config.json
#   --out DIR         results: llama_bench.json (all tests, llama-bench's JSON), llama_bench.md (tables),
#                     llama_cpp_info.txt (version, route, build flags, libraries), llama_cpp_peer.log (console)
#                     and llama_logs.tar.gz (every step's log: ldd, configure, build, convert, bench)
#   --carry DIR       where the tarballs are (default: <repo>/.carry)
#   --reps N          llama-bench repetitions per test (default 5)
#   --jobs N          build parallelism (default: nproc)
#   --force-build     ignore the prebuilt binary and build from source
#   --keep-gguf       reuse WORK/model-bf16.gguf if it already exists
#   --cpu-only        build and run a CPU-only llama-bench (-ngl 0, few tokens, 1 repetition): a local check
#                     of the conversion and the GGUF on a machine without a GPU
#
# Every step says what it does; any failure stops the script with a message naming the step and its log.

set -euo pipefail

# ----------------------------------------------------------------------------------------------- arguments
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="" CKPT="" OUTD="" CARRY="$REPO/.carry" REPS=5 JOBS="" FORCE_BUILD=0 KEEP_GGUF=0 CPU_ONLY=0

die() { echo "llama_cpp_peer: ERROR: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --work) WORK="${2:?--work needs a directory}"; shift 2 ;;
        --checkpoint) CKPT="${2:?--checkpoint needs a directory}"; shift 2 ;;
        --out) OUTD="${2:?--out needs a directory}"; shift 2 ;;
        --carry) CARRY="${2:?--carry needs a directory}"; shift 2 ;;
        --reps) REPS="${2:?--reps needs a number}"; shift 2 ;;
        --jobs) JOBS="${2:?--jobs needs a number}"; shift 2 ;;
        --force-build) FORCE_BUILD=1; shift ;;
        --keep-gguf) KEEP_GGUF=1; shift ;;
        --cpu-only) CPU_ONLY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[ -n "$WORK" ] || die "--work DIR is required"
[ -n "$CKPT" ] || die "--checkpoint DIR is required"
[ -n "$OUTD" ] || die "--out DIR is required"
[ -d "$CKPT" ] || die "checkpoint directory not found: $CKPT"
for f in config.json tokenizer.json tokenizer_config.json; do
    [ -f "$CKPT/$f" ] || die "checkpoint $CKPT has no $f (the converter needs config.json, tokenizer.json and tokenizer_config.json)"
done
ls "$CKPT"/*.safetensors >/dev/null 2>&1 || die "checkpoint $CKPT has no *.safetensors file"
[ -f "$CARRY/llama.cpp.tar.gz" ] || die "$CARRY/llama.cpp.tar.gz not found (carry the .carry folder; see tools/LLAMA_CPP.md)"
JOBS="${JOBS:-$(nproc)}"

mkdir -p "$WORK" "$OUTD"
WORK="$(cd "$WORK" && pwd)"; OUTD="$(cd "$OUTD" && pwd)"; CKPT="$(cd "$CKPT" && pwd)"; CARRY="$(cd "$CARRY" && pwd)"
LOG="$OUTD/llama_cpp_peer.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

INFO="$OUTD/llama_cpp_info.txt"
: > "$INFO"
# Step logs go to WORK/logs and, at exit (failure too), into OUT/llama_logs.tar.gz, so that OUT holds five files:
# llama_bench.json, llama_bench.md, llama_cpp_info.txt, llama_cpp_peer.log (this console) and llama_logs.tar.gz.
LOGS="$WORK/logs"
rm -rf "$LOGS"; mkdir -p "$LOGS"
pack_logs() { tar czf "$OUTD/llama_logs.tar.gz" -C "$WORK" logs 2>/dev/null || true; }
trap pack_logs EXIT
info() { echo "$*" | tee -a "$INFO"; }
step() { echo; echo "=== [$(date +%H:%M:%S)] $*"; }
# run LOGFILE CMD...: run a command with its output in LOGFILE (and its tail on failure)
run_logged() {
    local logfile="$1"; shift
    echo "+ $*  (log: $logfile)"
    if ! "$@" >"$logfile" 2>&1; then
        echo "---- last 40 lines of $logfile ----"; tail -n 40 "$logfile"; echo "----"
        return 1
    fi
}

# The build flags used for both the prebuilt binary and a build here (keep in step with tools/LLAMA_CPP.md).
LLAMA_COMMIT=0c1e57098
CMAKE_FLAGS_COMMON=(
    -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_OPENSSL=OFF -DCMAKE_SKIP_BUILD_RPATH=ON
    "-DLLAMA_BUILD_COMMIT=$LLAMA_COMMIT" -DLLAMA_BUILD_NUMBER=0
)
# 90-real: sm_90 machine code only (H100/H200), no PTX: a smaller binary, the same kernels
CMAKE_FLAGS_CUDA=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_NCCL=OFF)

step "llama.cpp peer: work=$WORK checkpoint=$CKPT out=$OUTD carry=$CARRY reps=$REPS cpu_only=$CPU_ONLY"
info "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
info "host: $(uname -srm); $(ldd --version 2>&1 | head -n1)"
if [ "$CPU_ONLY" = 0 ]; then
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this needs the GPU machine (or pass --cpu-only)"
    info "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n1)"
fi

# ----------------------------------------------------------------------------------------------- source
SRC="$WORK/src/llama.cpp"
SRC_SUM="$(cksum < "$CARRY/llama.cpp.tar.gz")"
if [ -f "$SRC/.unpacked-from" ] && [ "$(cat "$SRC/.unpacked-from")" = "$SRC_SUM" ]; then
    step "reuse the llama.cpp source (and any build) in $WORK/src: same tarball"
else
    step "unpack the llama.cpp source into $WORK/src"
    rm -rf "$WORK/src"; mkdir -p "$WORK/src"
    tar xzf "$CARRY/llama.cpp.tar.gz" -C "$WORK/src" || die "could not unpack $CARRY/llama.cpp.tar.gz"
    echo "$SRC_SUM" > "$SRC/.unpacked-from"
fi
[ -f "$SRC/convert_hf_to_gguf.py" ] || die "unpacked source has no convert_hf_to_gguf.py"
info "llama.cpp source: $(grep -h 'commit\|version' "$SRC/CARRIED_VERSION.txt" | tr '\n' ';')"

# ----------------------------------------------------------------------------------------------- CUDA libraries
# The GPU machine's CUDA toolkit may lack cuBLAS; PyTorch's wheels (nvidia-cublas, nvidia-cuda-runtime) have it
# under site-packages/nvidia/cu13/{include,lib}. Find headers and libraries in either place.
CUDA_LIBDIRS="" CUBLAS_INC="" CUBLAS_LIB="" CUBLASLT_LIB="" CUDA_MAJOR=""
find_cuda_libs() {
    local c nvcc_root=/usr/local/cuda
    if ! command -v nvcc >/dev/null; then
        for c in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
            if [ -x "$c/nvcc" ]; then export PATH="$PATH:$c"; break; fi
        done
    fi
    if command -v nvcc >/dev/null; then
        CUDA_MAJOR="$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')"
        [ -n "$CUDA_MAJOR" ] || die "could not read the CUDA version from nvcc --version"
        nvcc_root="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
        # a wrapper script (as /usr/local/bin/nvcc may be) hides the real root; /usr/local/cuda is the usual one
        [ -f "$nvcc_root/include/cuda_runtime.h" ] || nvcc_root=/usr/local/cuda
    else
        CUDA_MAJOR=13
        echo "warning: no nvcc found: the prebuilt llama-bench can still run, a build from source cannot"
    fi
    local cands=("$nvcc_root/lib64" "$nvcc_root/lib" "$nvcc_root/targets/x86_64-linux/lib")
    c="$(ldconfig -p 2>/dev/null | awk -v n="libcublas.so.$CUDA_MAJOR" '$1 == n {print $NF; exit}')" || c=""
    [ -n "$c" ] && cands+=("$(dirname "$c")")
    local py
    py="$(python3 - "$CUDA_MAJOR" <<'EOF'
import os, sys
major = sys.argv[1]
for p in sys.path:
    for sub in ("nvidia/cu%s" % major, "nvidia/cublas", "nvidia/cuda_runtime"):
        d = os.path.join(p, sub, "lib")
        if os.path.isdir(d):
            print(d)
EOF
)" || true
    while IFS= read -r d; do [ -n "$d" ] && cands+=("$d"); done <<< "$py"
    local d
    for d in "${cands[@]}"; do
        [ -d "$d" ] || continue
        if [ -z "$CUBLAS_LIB" ] && [ -e "$d/libcublas.so.$CUDA_MAJOR" ]; then
            CUBLAS_LIB="$d/libcublas.so.$CUDA_MAJOR"; CUBLASLT_LIB="$d/libcublasLt.so.$CUDA_MAJOR"
            [ -f "$(dirname "$d")/include/cublas_v2.h" ] && CUBLAS_INC="$(dirname "$d")/include"
            [ -f "$nvcc_root/include/cublas_v2.h" ] && CUBLAS_INC="$nvcc_root/include"
        fi
        if [ -e "$d/libcudart.so.$CUDA_MAJOR" ] || [ -e "$d/libcublas.so.$CUDA_MAJOR" ] || [ -e "$d/libcublasLt.so.$CUDA_MAJOR" ]; then
            case ":$CUDA_LIBDIRS:" in *":$d:"*) ;; *) CUDA_LIBDIRS="${CUDA_LIBDIRS:+$CUDA_LIBDIRS:}$d" ;; esac
        fi
    done
    CUDA_ROOT="$nvcc_root"
    [ -n "$CUBLAS_LIB" ] || die "libcublas.so.$CUDA_MAJOR not found in the CUDA toolkit ($nvcc_root) nor in Python's nvidia packages"
    [ -f "$CUBLASLT_LIB" ] || die "libcublasLt.so.$CUDA_MAJOR not found beside $CUBLAS_LIB"
    info "cuda: nvcc $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\),.*/\1/p') at $nvcc_root; cuBLAS $CUBLAS_LIB; headers ${CUBLAS_INC:-missing}"
    info "cuda runtime library dirs (LD_LIBRARY_PATH): $CUDA_LIBDIRS"
}

# ----------------------------------------------------------------------------------------------- llama-bench
BENCH="" BENCH_TAG=""
check_bench() {  # check_bench BINARY: it runs, and (for CUDA) sees a CUDA device
    local bin="$1" tag="$2"
    [ -x "$bin" ] || { echo "no executable at $bin"; return 1; }
    echo "+ ldd $bin"; ldd "$bin" > "$LOGS/ldd_$tag.txt" 2>&1 || true
    if grep -q "libgomp.so.1 => not found" "$LOGS/ldd_$tag.txt"; then
        # PyTorch's wheel carries an OpenMP runtime when the system has none
        local tl; tl="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)" || tl=""
        if [ -n "$tl" ] && [ -e "$tl/libgomp.so.1" ]; then
            echo "libgomp.so.1 not on the system: using PyTorch's ($tl)"
            export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$tl"
            ldd "$bin" > "$LOGS/ldd_$tag.txt" 2>&1 || true
        fi
    fi
    cat "$LOGS/ldd_$tag.txt"
    if grep -q "not found" "$LOGS/ldd_$tag.txt"; then echo "missing shared libraries for $bin"; return 1; fi
    run_logged "$LOGS/llama_bench_help_$tag.txt" "$bin" --help || { echo "$bin --help failed"; return 1; }
    run_logged "$LOGS/llama_bench_version_$tag.txt" "$bin" --version || { echo "$bin --version failed"; return 1; }
    cat "$LOGS/llama_bench_version_$tag.txt"
    if [ "$CPU_ONLY" = 0 ]; then
        run_logged "$LOGS/llama_bench_devices_$tag.txt" "$bin" --list-devices || { echo "$bin --list-devices failed"; return 1; }
        cat "$LOGS/llama_bench_devices_$tag.txt"
        grep -q "CUDA0" "$LOGS/llama_bench_devices_$tag.txt" || { echo "$bin sees no CUDA device"; return 1; }
    fi
}

make_cuda_stub() {  # a link-time stand-in for libcuda.so.1 (the driver's own library is loaded at run time)
    local dir="$WORK/cudastub" inc="$CUDA_ROOT/include"
    mkdir -p "$dir"
    echo '#include <cuda.h>' | gcc -E -I"$inc" - | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[ ]*\(' | tr -d ' (' | sort -u > "$dir/syms.txt"
    [ -s "$dir/syms.txt" ] || die "could not list the CUDA driver API from $inc/cuda.h"
    { echo '/* link-time stub for libcuda.so.1 */'; while read -r s; do echo "int $s(void) { return 999; }"; done < "$dir/syms.txt"; } > "$dir/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so" "$dir/stub.c" || die "could not build the libcuda link stub"
    CUDA_STUB="$dir/libcuda.so"
}

build_bench() {
    local bdir flags
    if [ "$CPU_ONLY" = 1 ]; then
        bdir="$SRC/build-cpu"
        flags=("${CMAKE_FLAGS_COMMON[@]}" -DGGML_CUDA=OFF)
    else
        bdir="$SRC/build-cuda"
        command -v nvcc >/dev/null || die "nvcc not found: cannot build the CUDA llama-bench"
        make_cuda_stub
        flags=("${CMAKE_FLAGS_COMMON[@]}" "${CMAKE_FLAGS_CUDA[@]}"
               -DCMAKE_CUDA_COMPILER="$(command -v nvcc)"
               -DCUDA_cublas_LIBRARY="$CUBLAS_LIB" -DCUDA_cublasLt_LIBRARY="$CUBLASLT_LIB"
               -DCUDA_cuda_driver_LIBRARY="$CUDA_STUB"
               "-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$(dirname "$CUBLAS_LIB")")
        if [ -n "$CUBLAS_INC" ] && [ "$CUBLAS_INC" != "$CUDA_ROOT/include" ]; then
            flags+=("-DCMAKE_CUDA_FLAGS=-I$CUBLAS_INC" "-DCMAKE_CXX_FLAGS=-I$CUBLAS_INC")
        fi
        [ -n "$CUBLAS_INC" ] || die "cublas_v2.h not found (neither in $CUDA_ROOT/include nor beside $CUBLAS_LIB)"
    fi
    command -v cmake >/dev/null || die "cmake not found"
    command -v ninja >/dev/null || die "ninja not found"
    info "build: cmake $(cmake --version | head -n1 | awk '{print $3}'), $(gcc --version | head -n1), jobs $JOBS"
    info "build flags: ${flags[*]}"
    local t0; t0=$(date +%s)
    run_logged "$LOGS/llama_cpp_configure.log" cmake -S "$SRC" -B "$bdir" "${flags[@]}" \
        || die "CMake configure failed (see $LOGS/llama_cpp_configure.log)"
    run_logged "$LOGS/llama_cpp_build.log" cmake --build "$bdir" --target llama-bench -j "$JOBS" \
        || die "llama-bench build failed (see $LOGS/llama_cpp_build.log)"
    info "build time: $(( $(date +%s) - t0 )) s"
    BENCH="$bdir/bin/llama-bench"
}

if [ "$CPU_ONLY" = 0 ]; then
    step "find the CUDA libraries (cuBLAS, runtime)"
    find_cuda_libs
    export LD_LIBRARY_PATH="$CUDA_LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

PREBUILT="$CARRY/llama-bench-sm90.tar.gz"
if [ "$CPU_ONLY" = 0 ] && [ "$FORCE_BUILD" = 0 ] && [ -f "$PREBUILT" ]; then
    step "try the prebuilt llama-bench ($PREBUILT)"
    rm -rf "$WORK/prebuilt"; mkdir -p "$WORK/prebuilt"
    if tar xzf "$PREBUILT" -C "$WORK/prebuilt" && check_bench "$WORK/prebuilt/llama-bench-sm90/llama-bench" prebuilt; then
        BENCH="$WORK/prebuilt/llama-bench-sm90/llama-bench"; BENCH_TAG=prebuilt
        info "route: prebuilt binary ($PREBUILT)"
        [ -f "$WORK/prebuilt/llama-bench-sm90/BUILD_INFO.txt" ] && sed 's/^/prebuilt: /' "$WORK/prebuilt/llama-bench-sm90/BUILD_INFO.txt" | tee -a "$INFO"
    else
        echo "the prebuilt llama-bench does not run here: building from source instead"
    fi
fi
if [ -z "$BENCH" ]; then
    step "build llama-bench from source (log: $LOGS/llama_cpp_build.log)"
    build_bench
    check_bench "$BENCH" built || die "the llama-bench just built does not run (see the output above)"
    BENCH_TAG=built
    info "route: built from source here"
fi
info "llama-bench: $BENCH"
info "llama-bench --version: $(grep -h 'version\|built with' "$LOGS/llama_bench_version_$BENCH_TAG.txt" | tr '\n' ' ')"

# ----------------------------------------------------------------------------------------------- GGUF
GGUF="$WORK/model-bf16.gguf"
if [ "$KEEP_GGUF" = 1 ] && [ -s "$GGUF" ]; then
    step "reuse $GGUF (--keep-gguf)"
else
    step "convert $CKPT to a bf16 GGUF (log: $LOGS/convert.log)"
    python3 -c "import torch, transformers, numpy, yaml, safetensors" \
        || die "python3 lacks a package the converter needs (torch, transformers, numpy, pyyaml, safetensors)"
    info "converter python: $(python3 -c 'import sys, torch, transformers, numpy; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__)')"
    rm -f "$GGUF"
    t0=$(date +%s)
    # --no-mtp: the config declares an MTP layer (mtp_num_hidden_layers) that llama-bench does not need; a
    # checkpoint without mtp.* tensors gives a GGUF that does not load unless the MTP block is left out.
    PYTHONPATH="$SRC/gguf-py${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 \
        run_logged "$LOGS/convert.log" python3 "$SRC/convert_hf_to_gguf.py" "$CKPT" \
            --outtype bf16 --no-mtp --outfile "$GGUF" \
        || die "conversion failed (see $LOGS/convert.log); a tokenizer error means tokenizer.json/tokenizer_config.json are not the Qwen3.5 ones (tools/LLAMA_CPP.md)"
    [ -s "$GGUF" ] || die "the converter wrote no $GGUF"
    grep -E "tokenizer|pre-tokenizer|chkhsh|Model successfully" "$LOGS/convert.log" | tail -n 5 || true
    info "conversion: $(( $(date +%s) - t0 )) s, $(du -h "$GGUF" | cut -f1) ($GGUF)"
fi

# ----------------------------------------------------------------------------------------------- benchmark
if [ "$CPU_ONLY" = 1 ]; then
    NGL=0; REPS=1; PP=16; TG=4; DEPTHS=16
else
    NGL=99; PP=512,4096,32768; TG=128; DEPTHS=16,512,4096  # pp as the benchmark's kernel-stage prefill rows
fi
step "benchmark: pp$PP and tg$TG at depth 0, then tg$TG at depths $DEPTHS (-ngl $NGL -r $REPS)"
info "bench: llama-bench -m $GGUF -ngl $NGL -r $REPS: (1) -p $PP -n $TG; (2) -p 0 -n $TG -d $DEPTHS"
run_bench() {  # run_bench NAME ARGS...: JSON to OUT/NAME.json, markdown table to OUT/NAME.md
    local name="$1"; shift
    local cmd=("$BENCH" -m "$GGUF" -ngl "$NGL" -r "$REPS" -o json -oe md "$@")
    echo "+ ${cmd[*]}"
    if ! "${cmd[@]}" > "$LOGS/$name.json" 2> "$LOGS/$name.md"; then
        echo "---- last 40 lines of $LOGS/$name.md ----"; tail -n 40 "$LOGS/$name.md"
        die "llama-bench ($name) failed (see $LOGS/$name.md)"
    fi
    grep '^|' "$LOGS/$name.md" || true
}
run_bench bench_base -p "$PP" -n "$TG"
run_bench bench_depth -p 0 -n "$TG" -d "$DEPTHS"

python3 - "$LOGS" "$OUTD" <<'EOF' || die "could not merge the llama-bench JSON results"
import json, sys, os
logs, out = sys.argv[1], sys.argv[2]
rows = []
for name in ("bench_base", "bench_depth"):
    with open(os.path.join(logs, name + ".json")) as f:
        rows += json.load(f)
with open(os.path.join(out, "llama_bench.json"), "w") as f:
    json.dump(rows, f, indent=2)
print(f"{'test':<18}{'depth':>7}{'tokens/s':>12}{'± sd':>9}")
for r in rows:
    test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
    print(f"{test:<18}{r['n_depth']:>7}{r['avg_ts']:>12.2f}{r['stddev_ts']:>9.2f}")
EOF
cat "$LOGS"/bench_base.md "$LOGS"/bench_depth.md | grep '^|' > "$OUTD/llama_bench.md" || true

step "done: $OUTD/llama_bench.json, $OUTD/llama_bench.md, $INFO"
