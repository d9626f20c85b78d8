"""Loss-landscape metrics of trained models, the annotations that place a model in a phase."""
