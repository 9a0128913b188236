"""Layer 4: the TRL integration: the callback, per-trainer adapters, teachers."""
