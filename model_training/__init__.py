"""Training code for storydiff's masked diffusion checkpoints (`python -m model_training --help`)."""
