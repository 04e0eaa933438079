"""Interpretation of SAE latents: top images, label statistics (sigma_label, label_purity), grids."""
from .purity import (
                     chance_purity,
                     compare_purity,
                     direction_activations,
                     label_metrics,
                     label_purity,
                     plot_purity_distributions,
                     purity_summary,
                     random_directions,
                     sigma_label,
                     top_rows,
)
from .toplatents import (
                     InterpretResult,
                     interpret_sae,
                     latent_table,
                     render_grid,
                     save_table,
                     select_latents,
)

__all__ = [
                     "InterpretResult",
                     "chance_purity",
                     "compare_purity",
                     "direction_activations",
                     "interpret_sae",
                     "label_metrics",
                     "label_purity",
                     "latent_table",
                     "plot_purity_distributions",
                     "purity_summary",
                     "random_directions",
                     "render_grid",
                     "save_table",
                     "select_latents",
                     "sigma_label",
                     "top_rows",
]
