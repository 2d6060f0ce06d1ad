"""Where the old grab-bag went: projections (`projection`), the logit lens (`lens`), paired outcomes and
McNemar (`outcomes`), and the pages' view-model helpers (`views`). Re-exported here only for callers not yet
moved (app/state.py); new code imports the concept's own module."""

from stir_core.lens import LensReadout, lens_for_model, logit_lens, unembedding  # noqa: F401
from stir_core.outcomes import paired_outcomes, pareto_front  # noqa: F401
from stir_core.projection import (  # noqa: F401
    PROJECTIONS,
    UMAP_MIN_POINTS,
    Projection,
    cosine_matrix,
    nearest_neighbors,
    pca,
    project,
    umap_projection,
)
from stir_core.views import ScoreMatrix, TokenIntervention, diff_mask, score_matrix, token_interventions  # noqa: F401
