#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md as one prepared run: score_jax's training step
# (scripts/bench_train.py) next to the original PyTorch implementation's (scripts/bench_train_torch.py) on
# the same GPU, and the FID feature extraction (scripts/bench_inception.py). Every run is a separate
# process, one after the other (never two on the GPU at once), each under its own time limit, so one that
# hangs or fails costs only its own slot.
#
#   bash scripts/gpu_session.sh [STAGE ...]      (from the repository root; default stages: train128 inception)
#
# Stages, in the order given:
#   train128   NCSN++ and DDPM++ cont. (CIFAR-10), batch 128, fp32: score_jax, then the original (the 1.5x goal)
#   bf16       the same two score_jax steps with --bf16
#   train8     NCSN++ and DDPM++ cont., batch 8, fp32: score_jax and the original
#   native     the original's NCSN++ at batch 128 with --ops native (its pure-PyTorch upfirdn2d)
#   inception  scripts/bench_inception.py at batch 50 and 500, 32x32 inputs
#   smoke      tiny networks (--shrink), batch 2: checks the plumbing in a minute, also on a CPU
#
# Environment:
#   OUT                where logs and results.jsonl go (default: gpu_out); each run's log is OUT/<name>.log and
#                      each run's JSON line is appended to OUT/results.jsonl with its name and exit status
#   SCORE_SDE_PYTORCH  a checkout of yang-song/score_sde_pytorch at cb1f359f (default: .gpu/score_sde_pytorch);
#                      without it the original's runs are skipped, with a line saying so
#   PYTHON             the interpreter (default: python3)
#   STEPS              timed steps per training run (default: 20)
#   RUN_LIMIT_S        seconds allowed to each run before it is stopped (default: 240)
#   TOTAL_LIMIT_S      seconds for the whole script (default: 540, inside the device tool's 600 s per call);
#                      a run gets what is left of it at most, and runs with under 30 s left are skipped
#
# Packages missing on the GPU machine (ml_collections, say) can be put as wheels in .gpu/whl/: they are
# installed into a temporary folder first, with no index. .gpu/ is ignored by git. To prepare it here:
#
#   mkdir -p .gpu/whl
#   git clone https://github.com/yang-song/score_sde_pytorch .gpu/score_sde_pytorch
#   git -C .gpu/score_sde_pytorch checkout cb1f359f && rm -rf .gpu/score_sde_pytorch/.git
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/whl ml_collections
#
# and carry .gpu with the working tree to the GPU machine. The numbers go into docs/benchmarks.md by hand,
# with the machine they came from.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-gpu_out}
PYTHON=${PYTHON:-python3}
ORIGINAL=${SCORE_SDE_PYTORCH:-.gpu/score_sde_pytorch}
STEPS=${STEPS:-20}
RUN_LIMIT_S=${RUN_LIMIT_S:-240}
TOTAL_LIMIT_S=${TOTAL_LIMIT_S:-540}
DEADLINE=$((SECONDS + TOTAL_LIMIT_S))
NCSNPP=configs/ve/cifar10_ncsnpp_continuous.py
DDPMPP=configs/vp/cifar10_ddpmpp_continuous.py
STAGES=(train128 bf16 train8 native inception smoke)
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(train128 inception)
for stage in "${stages[@]}"; do  # every name is checked before anything runs
  if [[ ! " ${STAGES[*]} " == *" $stage "* ]]; then
    echo "gpu_session: unknown stage '$stage'; expected one of: ${STAGES[*]}" >&2
    exit 2
  fi
done
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G ".gpu/whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu/whl/*.whl \
    || { echo "gpu_session: the wheels in .gpu/whl did not install" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$site"
fi
if ! "$PYTHON" -c "import score_jax, ml_collections" 2>"$OUT/import.log"; then
  echo "gpu_session: score_jax does not import under $PYTHON (see $OUT/import.log); put missing packages as" \
       "wheels in .gpu/whl (see the header of this script)" >&2
  cat "$OUT/import.log" >&2
  exit 1
fi
"$PYTHON" - <<'EOF' | tee "$OUT/machine.txt"
import platform, jax
print(f"python {platform.python_version()} | jax {jax.__version__} | backend {jax.default_backend()} | "
      f"devices {[d.device_kind for d in jax.devices()]}")
try:
  import torch
  print(f"torch {torch.__version__} | cuda {torch.version.cuda} | "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device'}")
except ImportError:
  print("torch: not installed")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version \
  --format=csv >>"$OUT/machine.txt" 2>&1

# run NAME COMMAND...: the command under the time limit, its output in OUT/NAME.log, its last line (the
# scripts' JSON result) in OUT/results.jsonl as {"name", "rc", "result"}.
run() {
  local name=$1; shift
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "== $name: skipped, ${left} s left of TOTAL_LIMIT_S=$TOTAL_LIMIT_S"
    echo "{\"name\": \"$name\", \"rc\": null, \"skipped\": \"time\"}" >>"$OUT/results.jsonl"
    return
  fi
  local limit=$RUN_LIMIT_S
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name (limit ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local last
  last=$(tail -n 1 "$OUT/$name.log")
  "$PYTHON" - "$name" "$rc" "$last" "$((SECONDS - start))" >>"$OUT/results.jsonl" <<'EOF'
import json, sys
name, rc, last, wall = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
try:
  result = json.loads(last)
except ValueError:
  result = None
print(json.dumps({"name": name, "rc": rc, "wall_s": wall, "result": result}))
EOF
  echo "   rc $rc in $((SECONDS - start)) s | $(grep -E 'images/s' "$OUT/$name.log" | tail -n 1)"
  [ "$rc" -eq 0 ] || tail -n 5 "$OUT/$name.log"
}

jax_train() {  # NAME CONFIG BATCH [ARGS...]
  local name=$1 config=$2 batch=$3; shift 3
  run "$name" "$PYTHON" scripts/bench_train.py --config "$config" --batch "$batch" --steps "$STEPS" "$@"
}

torch_train() {  # NAME CONFIG BATCH [ARGS...]
  local name=$1 config=$2 batch=$3; shift 3
  if [ ! -f "$ORIGINAL/losses.py" ]; then
    echo "== $name: skipped, no score_sde_pytorch checkout at $ORIGINAL (set SCORE_SDE_PYTORCH)"
    return
  fi
  local device=cpu
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && device=cuda
  run "$name" "$PYTHON" scripts/bench_train_torch.py --original "$ORIGINAL" --config "$config" --batch "$batch" \
    --steps "$STEPS" --device "$device" "$@"
}

for stage in "${stages[@]}"; do
  case $stage in
    train128)
      jax_train jax_ncsnpp_b128 $NCSNPP 128
      torch_train torch_ncsnpp_b128 $NCSNPP 128
      jax_train jax_ddpmpp_b128 $DDPMPP 128
      torch_train torch_ddpmpp_b128 $DDPMPP 128 ;;
    bf16)
      jax_train jax_ncsnpp_b128_bf16 $NCSNPP 128 --bf16
      jax_train jax_ddpmpp_b128_bf16 $DDPMPP 128 --bf16 ;;
    train8)
      jax_train jax_ncsnpp_b8 $NCSNPP 8
      torch_train torch_ncsnpp_b8 $NCSNPP 8
      jax_train jax_ddpmpp_b8 $DDPMPP 8
      torch_train torch_ddpmpp_b8 $DDPMPP 8 ;;
    native)
      torch_train torch_ncsnpp_b128_native $NCSNPP 128 --ops native ;;
    inception)
      run inception_b50 "$PYTHON" scripts/bench_inception.py --batch 50 --size 32 --repeats 10
      run inception_b500 "$PYTHON" scripts/bench_inception.py --batch 500 --size 32 --repeats 5 ;;
    smoke)
      STEPS=2 jax_train smoke_jax $DDPMPP 2 --shrink
      STEPS=2 torch_train smoke_torch $DDPMPP 2 --shrink --ops native ;;
  esac
done
echo "results: $OUT/results.jsonl"
