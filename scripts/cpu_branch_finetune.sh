#!/usr/bin/env bash
# One CPU fine-tune branch from a plain DDPM pipeline (START; 1 torch thread unless THREADS=n; resumable), as run on 2026-11-27:
#   bash scripts/cpu_branch_finetune.sh interp-gentle pixel 3 1 600    # dummy-player branch, lambda 3 -> 1
#   bash scripts/cpu_branch_finetune.sh baseline pixel 0 1 600         # lambda = 0, identical steps
# usage: cpu_branch_finetune.sh NAME VALUE LAMBDA_START LAMBDA_END STEPS   (RUNS=runs/s11, START=runs/gpu/baseline,
#        EXTRA="more train_interpretable.py flags", e.g. EXTRA="--ie_border 1")
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/recipe.sh
RUNS=${RUNS:-runs/s11}; START=${START:-runs/gpu/baseline}; mkdir -p "$RUNS"
name=$1; value=$2; ls=$3; le=$4; steps=$5
OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1} .venv/bin/python train_interpretable.py \
  --train_data_dir ../shared/data/utkface64 --resolution 64 --train_batch_size 32 --mixed_precision bf16 \
  --checkpointing_steps 100 --checkpoints_total_limit 2 --save_images_steps 100000 --log_every 10 \
  "${RECIPE_FLAGS[@]}" --value "$value" --ie_batch_size 16 --pretrained_model_name_or_path "$START" \
  "${FINETUNE_FLAGS[@]}" --max_train_steps "$steps" --lambda_decay_steps "$steps" --lambda_start "$ls" --lambda_end "$le" \
  --output_dir $RUNS/$name ${EXTRA:-} $(resume_flag $RUNS/$name) \
  > $RUNS/$name.log 2>&1
