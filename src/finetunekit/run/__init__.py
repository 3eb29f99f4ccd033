"""Building and training a run: the recipe and its resolved plan, the model, the trainer, checkpoints, the feature cache, the run directory's files, the model card."""
