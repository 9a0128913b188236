"""Layer 2: running models: targeted rollouts, batched vector-Jacobian products, verifiers."""
