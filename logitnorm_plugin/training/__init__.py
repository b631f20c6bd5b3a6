"""Training: the run configuration, recipes, the step, the loop, augmentation, distributed
helpers, checkpoints and run folders."""
