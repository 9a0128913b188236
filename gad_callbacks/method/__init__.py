"""Layer 1: the mathematics of METHOD.md on tensors (torch only; no models, trainers, files or logging)."""
