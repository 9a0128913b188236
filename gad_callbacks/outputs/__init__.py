"""Layer 5: records on disk, scalar metrics, TensorBoard extras."""
