"""The model-side library: checkpoints, samplers and text. No web framework, no accelerate."""
