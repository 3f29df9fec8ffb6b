"""Dataset building: maskers, generators, perturbations and the pipeline that runs them."""
