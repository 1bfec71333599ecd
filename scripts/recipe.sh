# Sourced by the training scripts: the one definition of the dummy-player recipe they share.
# Players (concepts; the rest region is implied), their masks, the L_IE estimator and what absent players become;
# the region value (--value) and lambda schedule are chosen per run.
RECIPE_FLAGS=(--concepts "eyes=4,5 nose=6 mouth=7" --mask_dilation 2 --estimator pair --baseline other_image)
# The noise schedule (release 2): v-prediction with zero terminal SNR and trailing DDIM steps, so that x_T carries
# none of the image's colour and the model cannot learn to read colour from the noise's low frequencies
# (Lin et al. 2024); set by the plain pretrain, inherited by both branches.
SCHEDULE_FLAGS=(--prediction_type v_prediction --rescale_betas_zero_snr --timestep_spacing trailing)
# Optimisation of a fine-tune branch from a plain DDPM (the paper's lr; fp16 weights in the final pipeline).
FINETUNE_FLAGS=(--learning_rate 2e-4 --lr_warmup_steps 0 --save_fp16)

resume_flag() {  # continue a run from its latest checkpoint when it has one
  if ls -d "$1"/checkpoint-* >/dev/null 2>&1; then echo "--resume_from_checkpoint latest"; fi
}
