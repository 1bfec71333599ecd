#!/usr/bin/env bash
# Trains the shipped default models, resumably:
#   1. a plain DDPM (v-prediction, zero terminal SNR, trailing steps) from scratch, or continued from the plain
#      pipeline $PRETRAIN_FROM                           -> $RUNS/pretrain
#   2. from that checkpoint, the dummy-player branch  -> $RUNS/interpretable  (train_interpretable.py's defaults: the
#      shipped recipe, RECIPE in train_interpretable.py)
#   3. from the same checkpoint, identical steps and settings with lambda = 0 -> $RUNS/baseline
# Each phase resumes from its latest checkpoint when rerun, and is skipped once its final pipeline exists.
# The fine-tune length is the recipe's unless FINETUNE_STEPS is given, or FINETUNE_MIN (wall-clock minutes), from
# which the step count is derived with the measured pretrain speed so that the lambda decay fits the budget.
#   CPU:  PRETRAIN_MIN=600 FINETUNE_MIN=240 PRECISION=bf16 BATCH=16 bash scripts/train_default_models.sh
#   GPU:  PRETRAIN_MIN=3.5 FINETUNE_MIN=2.2 PRECISION=bf16 BATCH=128 bash scripts/train_default_models.sh
# The shipped models: the plain model continued with the new schedule,
#   PRETRAIN_FROM=<plain pipeline folder> PRETRAIN_STEPS=2520 LR_PRETRAIN=2e-4 PRECISION=bf16 bash scripts/train_default_models.sh
# then 300 more plain steps (`train_interpretable.py --lambda_start 0 --max_train_steps 300` from $RUNS/pretrain); with
# that model as $RUNS/pretrain, a second run of this script trains the recipe's two 2300-step branches from it.
# BRANCH_FLAGS go to the interpretable branch only (e.g. "--lambda_start 1e3 --lambda_end 1 --ie_context" for the
# paper's schedule and symmetric game), EXTRA to every phase.
# The faces are read from $INTERPRETABLE_DDPM_DATA (default ../shared/data/utkface64 beside the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/default}
PRETRAIN_MIN=${PRETRAIN_MIN:-60}
FINETUNE_MIN=${FINETUNE_MIN:-}     # a wall-clock budget for each branch (default: the recipe's steps, no limit)
BATCH=${BATCH:-}                   # examples per batch (default: the recipe's)
PRECISION=${PRECISION:-bf16}
PY=${PY:-python}
LR_PRETRAIN=${LR_PRETRAIN:-3e-4}
PRETRAIN_FROM=${PRETRAIN_FROM:-}   # a plain pipeline to continue instead of starting from scratch
IE_BATCH=${IE_BATCH:-}             # examples per batch that also get L_IE (default: the recipe's)
IE_COST=${IE_COST:-3.2}   # measured cost of one pair-estimator step in plain steps (benchmarks/bench_train.py)
EXTRA=${EXTRA:-}
BRANCH_FLAGS=${BRANCH_FLAGS:-}
# The noise schedule of the plain model: v-prediction with zero terminal SNR and trailing DDIM steps, so that x_T
# carries none of the image's colour and the model cannot learn to read colour from the noise's low frequencies
# (Lin et al. 2024); both branches inherit it.
SCHEDULE_FLAGS=(--prediction_type v_prediction --rescale_betas_zero_snr --timestep_spacing trailing)

resume_flag() {  # continue a run from its latest checkpoint when it has one
  if ls -d "$1"/checkpoint-* >/dev/null 2>&1; then echo "--resume_from_checkpoint latest"; fi
}

# settings of the machine and the run, not of the recipe
common=(${BATCH:+--train_batch_size "$BATCH"} ${IE_BATCH:+--ie_batch_size "$IE_BATCH"} --resolution 64
        --mixed_precision "$PRECISION" --checkpointing_steps "${CKPT_STEPS:-500}" --checkpoints_total_limit 2
        --save_images_steps "${SAMPLE_STEPS:-1000}" --log_every 20 --seed "${SEED:-0}")

json_field() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

if [ ! -f "$RUNS/pretrain/model_index.json" ]; then
  from=(); warmup=200
  if [ -n "$PRETRAIN_FROM" ]; then from=(--pretrained_model_name_or_path "$PRETRAIN_FROM"); warmup=100; fi
  echo "== phase 1: plain DDPM ${PRETRAIN_FROM:+continued from $PRETRAIN_FROM }($PRETRAIN_MIN min)"
  $PY train_interpretable.py "${common[@]}" "${SCHEDULE_FLAGS[@]}" "${from[@]}" --output_dir "$RUNS/pretrain" \
      --lambda_start 0 --learning_rate "$LR_PRETRAIN" --lr_warmup_steps "$warmup" --max_train_steps "${PRETRAIN_STEPS:-10000000}" \
      --max_train_minutes "$PRETRAIN_MIN" $(resume_flag "$RUNS/pretrain") $EXTRA
fi

finetune=(--pretrained_model_name_or_path "$RUNS/pretrain" --save_fp16)
if [ -z "${FINETUNE_STEPS:-}" ] && [ -n "$FINETUNE_MIN" ]; then
  FINETUNE_STEPS=$($PY - "$RUNS/pretrain/train_summary.json" "$FINETUNE_MIN" "$IE_COST" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
rate = s["train_steps"] / max(s["train_minutes"], 1e-3)  # plain steps per minute
print(max(10, int(rate * float(sys.argv[2]) / float(sys.argv[3]))))
PYEOF
)
fi
if [ -n "$FINETUNE_MIN" ]; then
  # both branches get the same wall-clock guard, so that their run records differ only in lambda and the game
  finetune+=(--max_train_minutes "$($PY -c "print($FINETUNE_MIN * 1.3)")")
fi
echo "== fine-tune steps: ${FINETUNE_STEPS:-as in the recipe}"

if [ ! -f "$RUNS/interpretable/model_index.json" ]; then
  echo "== phase 2: interpretable fine-tune"
  $PY train_interpretable.py "${common[@]}" "${finetune[@]}" --output_dir "$RUNS/interpretable" \
      ${FINETUNE_STEPS:+--max_train_steps "$FINETUNE_STEPS"} $BRANCH_FLAGS $(resume_flag "$RUNS/interpretable") $EXTRA
fi
DONE_STEPS=$(json_field "$RUNS/interpretable/train_summary.json" train_steps)

if [ ! -f "$RUNS/baseline/model_index.json" ]; then
  echo "== phase 3: baseline fine-tune, lambda = 0, $DONE_STEPS steps"
  $PY train_interpretable.py "${common[@]}" "${finetune[@]}" --output_dir "$RUNS/baseline" \
      --max_train_steps "$DONE_STEPS" --lambda_start 0 \
      $(resume_flag "$RUNS/baseline") $EXTRA
fi
echo "== done: $RUNS/{pretrain,interpretable,baseline}"
