"""Independent random streams by name: every random choice of the diagnostic draws from its own seeded generator.

Consecutive integer seeds (`seed`, `seed + 1`, ...) handed to different purposes overlap: rollout `i`'s node choice
would replay rollout `i - 1`'s rollouts. A stream's seed is instead a hash of everything that names it (the run's
seed, the rollout, the purpose), so two streams coincide only if their names do.
"""

import hashlib

import torch


def derive_seed(*names) -> int:
    """A 63-bit seed determined by `names` (ints and strings), independent across different names."""
    digest = hashlib.sha256(repr(tuple(names)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream(*names, device="cpu") -> torch.Generator:
    """A `torch.Generator` on `device` seeded by [`derive_seed`] of `names`."""
    return torch.Generator(device=device).manual_seed(derive_seed(*names))
