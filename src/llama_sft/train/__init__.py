"""Training: collators, the Trainer assembly, callbacks, outputs and resume."""
