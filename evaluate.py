#!/usr/bin/env python
# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Evaluates interpretable-DDPM pipelines: locality of region edits, realism (FID, KID, precision/recall, C2ST),
Shapley leakage and real-image edits. The command line of the `evaluation` package (see `evaluation/cli.py`):

    python evaluate.py models/interpretable-ddpm-faces64 --baseline models/ddpm-faces64-baseline \
        --num_pairs 20 --num_fid_samples 200 --num_inference_steps 50 --output_dir outputs/eval-quick

The package's public names are re-exported here (private helpers are imported from their modules), so `import evaluate` keeps working for scripts and tests.
"""

import sys

from evaluation.c2st import C2ST_METHOD, classifier_two_sample_test  # noqa: F401
from evaluation.cli import (  # noqa: F401
    STAGES,
    display_path,
    main,
    parse_args,
    prepare_output_dir,
    run,
)
from evaluation.figures import (  # noqa: F401
    plot_attribution_matrices,
    plot_edit_grid,
    plot_emergence_curves,
    plot_end_to_end_matrices,
    plot_leakage_curves,
    plot_strength_sweep,
    save_image_grid,
)
from evaluation.locality import (  # noqa: F401
    ALL_EDITS,
    BLEND_MODES,
    BLEND_SUFFIX,
    COLOR_SPACES,
    EDITS,
    NORMALIZATIONS,
    SEAM_WIDTH,
    border_band,
    donor_distance_ratio,
    evaluate_locality,
    gradient_magnitude,
    seam_score,
)
from evaluation.metrics import (  # noqa: F401
    DEFAULT_FID_CACHE,
    FID_METHOD,
    FID_RESIZE_MODE,
    INCEPTION_SHA1,
    OFF_COLOUR_MIN_PIXELS,
    OFF_COLOUR_PERCENTILE,
    PR_METHOD,
    PR_NEIGHBOURS,
    SKIN_LABEL,
    InceptionFeatures,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    off_colour_rate,
    off_colour_thresholds,
    part_colour_distances,
    precision_recall,
    precision_recall_from_features,
    real_colour_reference,
    reference_features,
)
from evaluation.pipelines import (  # noqa: F401
    has_concept_masks,
    lend_concept_masks,
    load_checkpoint_or_pipeline,
    to_uint8,
)
from evaluation.real_photos import (  # noqa: F401
    default_inversion_strength,
    evaluate_real,
)
from evaluation.report import (  # noqa: F401
    PAPER_FID,
    PAPER_TABLE1,
    markdown_report,
)
from evaluation.stages import (  # noqa: F401
    attribution_inputs,
    attribution_timesteps,
    emergence_step_indices,
    evaluate_attribution,
    evaluate_edit_realism,
    evaluate_emergence,
    evaluate_end_to_end,
    evaluate_fid,
)
from evaluation.stats import (  # noqa: F401
    BOOTSTRAP_RESAMPLES,
    CI_METHOD,
    CI_MIN_SAMPLES,
    SEED_STREAMS,
    ZERO_MEAN_FLOOR,
    attach_ratios,
    derived_seed,
    mean_ci,
    ratio_ci,
    seeded_latents,
)

if __name__ == "__main__":
    sys.exit(main(parse_args()))
