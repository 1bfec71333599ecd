#!/usr/bin/env bash
# Trains the shipped default models, resumably:
#   1. a plain DDPM (v-prediction, zero terminal SNR, trailing steps) from scratch, or continued from the plain
#      pipeline $PRETRAIN_FROM                           -> $RUNS/pretrain
#   2. from that checkpoint, the dummy-player branch  -> $RUNS/interpretable  (the shipped recipe: one-way game,
#      L_IE only at t >= 100, lambda 20 -> 12)
#   3. from the same checkpoint, identical steps and settings with lambda = 0 -> $RUNS/baseline
# Each phase resumes from its latest checkpoint when rerun, and is skipped once its final pipeline exists.
# Budgets are wall-clock minutes per phase; the fine-tune step count is derived from the measured pretrain speed so
# that the lambda decay fits the fine-tune budget.
#   CPU:  PRETRAIN_MIN=600 FINETUNE_MIN=240 PRECISION=bf16 BATCH=16 bash scripts/train_default_models.sh
#   GPU:  PRETRAIN_MIN=3.5 FINETUNE_MIN=2.2 PRECISION=bf16 BATCH=128 bash scripts/train_default_models.sh
# Release 2 (model_card.md, "Training"): the release-1 lambda = 0 model continued with the new schedule, then branches
#   PRETRAIN_FROM=<release-1 baseline folder> PRETRAIN_STEPS=2520 LR_PRETRAIN=2e-4 BATCH=32 FINETUNE_STEPS=300 \
#   IE_BATCH=16 bash scripts/train_default_models.sh
# The faces are read from $INTERPRETABLE_DDPM_DATA (default ../shared/data/utkface64 beside the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/recipe.sh
RUNS=${RUNS:-runs/default}
PRETRAIN_MIN=${PRETRAIN_MIN:-60}
FINETUNE_MIN=${FINETUNE_MIN:-30}
BATCH=${BATCH:-16}
PRECISION=${PRECISION:-bf16}
PY=${PY:-python}
LR_PRETRAIN=${LR_PRETRAIN:-3e-4}
PRETRAIN_FROM=${PRETRAIN_FROM:-}   # a plain pipeline to continue instead of starting from scratch
IE_BATCH=${IE_BATCH:-}             # examples per batch that also get L_IE (default: all)
IE_COST=${IE_COST:-3.2}   # measured cost of one pair-estimator step in plain steps (benchmarks/bench_train.py)
EXTRA=${EXTRA:-}
# The shipped recipe (model_card.md, "How the recipe was chosen"): the one-way game (rest = context) with a 1 px
# border band, L_IE only at t >= 100 (where it costs the least FID) and lambda 20 -> 12; GAME="" for the paper's
# symmetric game at every t
GAME=${GAME---ie_border 1 --ie_context rest --ie_min_timestep 100}
LAMBDA_START=${LAMBDA_START:-20}
LAMBDA_END=${LAMBDA_END:-12}

common=(${IE_BATCH:+--ie_batch_size "$IE_BATCH"} --resolution 64 --train_batch_size "$BATCH" --mixed_precision "$PRECISION"
        --checkpointing_steps "${CKPT_STEPS:-500}" --checkpoints_total_limit 2 --save_images_steps "${SAMPLE_STEPS:-1000}"
        --log_every 20 --seed "${SEED:-0}" "${RECIPE_FLAGS[@]}" --value pixel)

steps_of() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['train_steps'])" "$1/train_summary.json"; }

if [ ! -f "$RUNS/pretrain/model_index.json" ]; then
  from=(); warmup=200
  if [ -n "$PRETRAIN_FROM" ]; then from=(--pretrained_model_name_or_path "$PRETRAIN_FROM"); warmup=100; fi
  echo "== phase 1: plain DDPM ${PRETRAIN_FROM:+continued from $PRETRAIN_FROM }($PRETRAIN_MIN min)"
  $PY train_interpretable.py "${common[@]}" "${SCHEDULE_FLAGS[@]}" "${from[@]}" --output_dir "$RUNS/pretrain" \
      --lambda_start 0 --learning_rate "$LR_PRETRAIN" --lr_warmup_steps "$warmup" --max_train_steps "${PRETRAIN_STEPS:-10000000}" \
      --max_train_minutes "$PRETRAIN_MIN" $(resume_flag "$RUNS/pretrain") $EXTRA
fi

if [ -z "${FINETUNE_STEPS:-}" ]; then
  FINETUNE_STEPS=$($PY - "$RUNS/pretrain/train_summary.json" "$FINETUNE_MIN" "$IE_COST" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
rate = s["train_steps"] / max(s["train_minutes"], 1e-3)  # plain steps per minute
print(max(10, int(rate * float(sys.argv[2]) / float(sys.argv[3]))))
PYEOF
)
fi
echo "== fine-tune steps: $FINETUNE_STEPS"

# both branches get the same wall-clock guard, so that their run records differ only in lambda and the game
finetune=(--pretrained_model_name_or_path "$RUNS/pretrain" "${FINETUNE_FLAGS[@]}"
          --lambda_decay_steps "$FINETUNE_STEPS" --max_train_minutes "$($PY -c "print($FINETUNE_MIN * 1.3)")")

if [ ! -f "$RUNS/interpretable/model_index.json" ]; then
  echo "== phase 2: interpretable fine-tune"
  $PY train_interpretable.py "${common[@]}" "${finetune[@]}" --output_dir "$RUNS/interpretable" \
      --max_train_steps "$FINETUNE_STEPS" --lambda_start "$LAMBDA_START" --lambda_end "$LAMBDA_END" \
      $GAME $(resume_flag "$RUNS/interpretable") $EXTRA
fi
DONE_STEPS=$(steps_of "$RUNS/interpretable")

if [ ! -f "$RUNS/baseline/model_index.json" ]; then
  echo "== phase 3: baseline fine-tune, lambda = 0, $DONE_STEPS steps"
  $PY train_interpretable.py "${common[@]}" "${finetune[@]}" --output_dir "$RUNS/baseline" \
      --lambda_start 0 --max_train_steps "$DONE_STEPS" $(resume_flag "$RUNS/baseline") $EXTRA
fi
echo "== done: $RUNS/{pretrain,interpretable,baseline}"
