"""Training, LOSO evaluation and metrics."""
