#!/bin/sh
# The GPU figures of the speed work, in stages that each fit a ten-minute slot and write
# their results to OUT as they finish, so a stage cut short loses only itself.
#
#   sh benchmarks/gpu_campaign.sh KIT OUT STAGE...
#
# KIT: a folder made by `python benchmarks/gpu_kit.py pack` (wheels, weights, pictures), for
# a host that can fetch nothing; it is unpacked on every call, since such hosts start bare.
# Stages, in the order worth running them; on a host that allows ten minutes a command,
# one call each for `ttq`, `compiled`, `bench`, `history length finish`, `stopping narrowing memory`, `tiles` and `print`
# (and `bench` again with BENCH_FLAGS="--precision tf32 --no-baseline --no-latency" and
# another OUT, for TF32's stream and sweep):
#   ttq        time to quality: every eager contender and neural-style-pt, side by side
#   compiled   time to quality: the torch.compile contenders (each compiles first)
#   bench      nstd bench without time to quality: standard runs, batch and scale sweeps
#              (the share of the bf16 peak), and drop-to-output latency on an idle daemon
#   history    the bf16 L-BFGS history against fp32: step time, bytes, the picture
#   length     shorter L-BFGS histories (50, 20, 10 pairs) against the default 100, to the picture
#   finish     bf16 with a short TF32 finish, against fp32 and bf16 alone
#   stopping   where the stopping rule stops at SIZE, in fp32
#   narrowing  a batch whose photos stop at different iterations, narrowed or not
#   memory     a masked batch's peak against the planner's estimate
#   tiles      a photo tiled under a cap beside it whole, at 3000 and 4500 px, bf16 with
#              checkpointing: peaks, times, losses, the seam figure (benchmarks/tiles.py)
#   print      a 12000x9000 photo (108 MP) tiled under a 24 GiB cap: its peak and time
# `python benchmarks/goals.py OUT [OUT-tf32]` then reads issue 13's goals off the results.
# The environment may change DEVICE (cuda), SIZE (512), ITERATIONS (500), SWEEP (100:
# the sweeps' iterations, scaled to ITERATIONS), STAGE_LIMIT (seconds a stage may run,
# 540), TTQ_FLAGS and BENCH_FLAGS (more options for ttq.py and nstd bench) and PYTHON
# (python3). A CPU dry run, a minute or two:
#   DEVICE=cpu SIZE=64 ITERATIONS=10 SWEEP=5 \
#   BENCH_FLAGS="--no-latency --sizes 64 --max-batch 4" sh benchmarks/gpu_campaign.sh .gpukit out ttq bench
set -eu
STAGES="ttq compiled bench history length finish stopping narrowing memory tiles print"
[ $# -ge 3 ] || { echo "usage: $0 KIT OUT STAGE... (stages: $STAGES)" >&2; exit 2; }
KIT=$(cd "$1" && pwd); OUT=$2; shift 2
for s in "$@"; do
    case " $STAGES " in *" $s "*) ;; *) echo "$0: unknown stage '$s' (stages: $STAGES)" >&2; exit 2 ;; esac
done
DEVICE=${DEVICE:-cuda}; SIZE=${SIZE:-512}; ITERATIONS=${ITERATIONS:-500}; SWEEP=${SWEEP:-100}
STAGE_LIMIT=${STAGE_LIMIT:-540}; PYTHON=${PYTHON:-python3}; TTQ_FLAGS=${TTQ_FLAGS:-}; BENCH_FLAGS=${BENCH_FLAGS:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SITE=${TMPDIR:-/tmp}/nstd-kit-site
mkdir -p "$OUT"
LOG=$OUT/campaign.log

say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }

# The wheels a PyTorch image lacks, beside the checkout's own nstd; then the weights.
setup() {
    if [ ! -d "$SITE" ]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$KIT"/wheels/*.whl
    fi
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    export NSTD_MODELS_DIR=${NSTD_MODELS_DIR:-${TMPDIR:-/tmp}/nstd-kit-models}
    if [ ! -f "$NSTD_MODELS_DIR/caffe.pth" ]; then
        "$PYTHON" "$ROOT/benchmarks/gpu_kit.py" unpack --kit "$KIT" --models-dir "$NSTD_MODELS_DIR" >>"$LOG" 2>&1 ||
            { tail -5 "$LOG" >&2; exit 1; }
    fi
    "$PYTHON" -c "import torch, nstd; print('torch', torch.__version__, 'nstd', nstd.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" >>"$LOG" 2>&1
}

# One stage's command, under the stage limit, its output kept in the log; a stage that
# fails or runs out of time is written down and the next one still runs.
stage() {
    name=$1; shift
    say "$name: $*"
    if timeout "$STAGE_LIMIT" "$@" >>"$LOG" 2>&1; then say "$name: done"; else say "$name: exit $?"; fi
}

setup
IMAGES=$KIT/images
for s in "$@"; do
    case $s in
    ttq)
        stage ttq "$PYTHON" "$ROOT/benchmarks/ttq.py" --images "$IMAGES" --size "$SIZE" \
            --iterations "$ITERATIONS" --device "$DEVICE" --no-compile --out "$OUT/ttq.json" $TTQ_FLAGS ;;
    compiled)
        stage compiled "$PYTHON" "$ROOT/benchmarks/ttq.py" --images "$IMAGES" --size "$SIZE" \
            --iterations "$ITERATIONS" --device "$DEVICE" --only '*compiled*' --out "$OUT/ttq-compiled.json" ;;
    bench)
        stage bench "$PYTHON" -m nstd bench --content "$IMAGES/tubingen.jpg" --style "$IMAGES/starry_night.jpg" \
            --device "$DEVICE" --size "$SIZE" --iterations "$ITERATIONS" --sweep-iterations "$SWEEP" \
            --no-time-to-quality --out "$OUT/bench" $BENCH_FLAGS ;;
    history)
        stage history "$PYTHON" "$ROOT/benchmarks/history.py" --images "$IMAGES" --size "$SIZE" \
            --iterations "$ITERATIONS" --precision bf16 --device "$DEVICE" --out "$OUT/history.json" ;;
    length)
        stage length "$PYTHON" "$ROOT/benchmarks/history_length.py" --images "$IMAGES" --size "$SIZE" \
            --iterations "$ITERATIONS" --device "$DEVICE" --out "$OUT/history-length.json" ;;
    finish)
        stage finish "$PYTHON" "$ROOT/benchmarks/finish.py" --images "$IMAGES" --size "$SIZE" \
            --iterations "$ITERATIONS" --device "$DEVICE" --finish-precision tf32 --out "$OUT/finish.json" ;;
    stopping)
        stage stopping "$PYTHON" "$ROOT/benchmarks/stopping.py" --images "$IMAGES" --size "$SIZE" \
            --device "$DEVICE" --out "$OUT/stopping.json" ;;
    narrowing)
        stage narrowing "$PYTHON" "$ROOT/benchmarks/narrowing.py" --images "$IMAGES" --size "$SIZE" \
            --device "$DEVICE" --out "$OUT/narrowing.json" ;;
    memory)
        stage memory "$PYTHON" "$ROOT/benchmarks/masked_memory.py" --device "$DEVICE" --repeats 1 \
            --out "$OUT/masked-memory.json" ;;
    tiles)
        stage tiles "$PYTHON" -m benchmarks.tiles --images "$IMAGES" --device "$DEVICE" \
            --size 3000,4500 --tile 2048 --iterations 50 --precision bf16 --checkpoint \
            --out "$OUT/tiles.json" --sheet "$OUT/tiles.jpg" --corner "$OUT/tiles-corner.png" ;;
    print)
        stage print "$PYTHON" -m benchmarks.tiles --images "$IMAGES" --device "$DEVICE" \
            --reach 12000 --limit 24GiB --iterations 3 --precision bf16 --checkpoint \
            --out "$OUT/tiles-print.json" ;;
    esac
done
