#!/usr/bin/env bash
# Fine-tune branches from the shipped plain DDPM, run side by side on one GPU, plus their lambda = 0 twin with
# identical settings exported at exactly each branch's final step (issue 7). Built for a short lent GPU session:
#   - every run stops on a wall-clock budget, and only at a multiple of EVERY steps (the stop is checked at log steps);
#   - the twin checkpoints every EVERY steps, so any branch's final step S has a twin checkpoint-S (or the twin is
#     resumed up to S), exported as its own pipeline in $RUNS/baseline-S;
#   - finished pipelines are packed (fp16, no checkpoints) into $OUT as soon as they exist.
# On the device (data and wheels carried in .carry/):
#   DATA=.carry/data/utkface64 OUT=$OUT bash scripts/gpu_branch_finetunes.sh
# Branches are NAME:VALUE:LAMBDA_START:LAMBDA_END; lambda decays over DECAY steps, then stays at LAMBDA_END.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/recipe.sh
PY=${PY:-python}
DATA=${DATA:-../shared/data/utkface64}
START=${START:-models/ddpm-faces64-baseline}
RUNS=${RUNS:-runs/gpu2}
OUT=${OUT:-$RUNS/packed}
MINUTES=${MINUTES:-5.5}
BATCH=${BATCH:-128}
IE_BATCH=${IE_BATCH:-64}
STEPS=${STEPS:-3000}
DECAY=${DECAY:-1200}
EVERY=${EVERY:-50}
BRANCHES=${BRANCHES:-"interp-3to1:pixel:3:1 interp-1to0.3:pixel:1:0.3 interp-mean-3to1:mean:3:1"}
mkdir -p "$RUNS" "$OUT"

# rerunning the script continues every run from its latest checkpoint (resume_flag)
common=(--train_data_dir "$DATA" --resolution 64 --train_batch_size "$BATCH" --mixed_precision bf16
        --save_images_steps 0 --log_every "$EVERY" "${RECIPE_FLAGS[@]}" --ie_batch_size "$IE_BATCH"
        --pretrained_model_name_or_path "$START" "${FINETUNE_FLAGS[@]}" --lambda_decay_steps "$DECAY")

pack() {  # pack a finished pipeline into $OUT
  $PY scripts/pack_run.py "$1" "$OUT/$(basename "$1").tgz"
}

# the twin runs until every branch is done; its own budget is only a backstop
$PY train_interpretable.py "${common[@]}" --value pixel --lambda_start 0 --max_train_steps "$STEPS" \
    --max_train_minutes "$($PY -c "print($MINUTES + 2)")" --checkpointing_steps "$EVERY" \
    --output_dir "$RUNS/baseline" $(resume_flag "$RUNS/baseline") >> "$RUNS/baseline.log" 2>&1 &
twin=$!

pids=()
for spec in $BRANCHES; do
  IFS=: read -r name value ls le <<< "$spec"
  ( $PY train_interpretable.py "${common[@]}" --value "$value" --lambda_start "$ls" --lambda_end "$le" \
        --max_train_steps "$STEPS" --max_train_minutes "$MINUTES" --checkpointing_steps $((EVERY * 10)) \
        --checkpoints_total_limit 1 --output_dir "$RUNS/$name" $(resume_flag "$RUNS/$name") >> "$RUNS/$name.log" 2>&1 \
    && pack "$RUNS/$name" ) &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
sleep 20  # let the twin write the checkpoint of the branches' last step
kill "$twin" 2>/dev/null || true
wait "$twin" 2>/dev/null || true

# the twin at each branch's final step
steps=$(for spec in $BRANCHES; do
  f="$RUNS/${spec%%:*}/train_summary.json"
  [ -f "$f" ] && $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['train_steps'])" "$f"
done | sort -un)
latest=$(ls -d "$RUNS"/baseline/checkpoint-* 2>/dev/null | sed 's/.*checkpoint-//' | sort -n | tail -1)
for s in $steps; do
  dir="$RUNS/baseline-$s"; [ -f "$dir/model_index.json" ] && continue; mkdir -p "$dir"
  if [ -d "$RUNS/baseline/checkpoint-$s" ]; then
    cp -r "$RUNS/baseline/checkpoint-$s" "$dir/"; from="$dir/checkpoint-$s"
  else  # the twin had not reached s: continue it from its latest checkpoint
    cp -r "$RUNS/baseline/checkpoint-$latest" "$dir/"; from="$dir/checkpoint-$latest"
  fi
  cp "$RUNS/baseline/train_log.jsonl" "$dir/" 2>/dev/null || true
  ( $PY train_interpretable.py "${common[@]}" --value pixel --lambda_start 0 --max_train_steps "$s" \
        --checkpointing_steps "$EVERY" --output_dir "$dir" --resume_from_checkpoint "$from" > "$dir.log" 2>&1 \
    && pack "$dir" ) &
  pids+=($!)
done
wait || true
for spec in $BRANCHES; do tail -n 2 "$RUNS/${spec%%:*}/train_log.jsonl" 2>/dev/null || true; done
cp "$RUNS"/*.log "$OUT/" 2>/dev/null || true
ls -la "$OUT"
exit $status
