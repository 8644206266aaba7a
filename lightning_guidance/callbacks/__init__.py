"""Lightning callbacks: EMA, sample grids, evaluation (evaluation networks live here, never in modules)."""
