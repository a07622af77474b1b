"""Training: optimizer (the OPT-IML recipe), train state and step, checkpoints, metrics, the loop."""
