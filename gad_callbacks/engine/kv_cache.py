"""KV caches for targeted rollouts: one forward per rollout, cropped to each node, batched, and preallocated.

Causal attention makes the keys and values at position `i` independent of later tokens, so one forward over a
rollout yields the cache of every node on it: a node's cache is the rollout's, cropped to the node's prefix. Nodes of
different lengths are left-padded (and masked) so that new tokens land at the same cache index in every row.
"""

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .model_io import model_device, output_cache


def prefix_caches(model, sequences, requests):
    """One forward per distinct rollout, up to its longest requested prefix; per-layer (keys, values) at batch 1."""
    device = model_device(model)
    needed = {}
    for r in requests:
        needed[r.sequence] = max(needed.get(r.sequence, 0), r.prefix_len)
    caches = {}
    for seq_idx, length in needed.items():
        ids = sequences[seq_idx][:length].to(device).unsqueeze(0)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = output_cache(out)
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise ValueError(
                "Targeted rollouts need a full-attention KV cache; this model's cache has sliding-window or other "
                "special layers, which cannot be cropped to a node's prefix. Use a model without sliding-window "
                "attention (e.g. use_sliding_window=False)."
            )
        caches[seq_idx] = [(layer.keys, layer.values) for layer in cache.layers]
    return caches


class PreallocatedLayer(DynamicLayer):
    """
    A KV-cache layer whose storage is allocated once for the whole decode. New keys are written in place and
    attention reads a view, where the default dynamic layer concatenates, i.e. copies the whole cache, every step:
    on long prefixes that copy, not the model, dominates decoding.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        b, h, n, d = keys.shape
        self._k = keys.new_empty(b, h, capacity, d)
        self._v = values.new_empty(b, h, capacity, values.shape[-1])
        self._k[:, :, :n] = keys
        self._v[:, :, :n] = values
        self.length, self.device, self.is_initialized = n, keys.device, True
        self._refresh()

    def _refresh(self):
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        self._k[:, :, self.length : self.length + n] = key_states
        self._v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._refresh()


def batch_cache(chunk_requests, caches, first_tokens_finished, max_new_tokens):
    """Left-padded, row-expanded KV cache for a chunk of requests; rows already finished (EOS forced) are left out."""
    max_len = max(r.prefix_len for r in chunk_requests)
    num_layers = len(next(iter(caches.values())))
    per_layer_k, per_layer_v, masks = [[] for _ in range(num_layers)], [[] for _ in range(num_layers)], []
    for r, finished in zip(chunk_requests, first_tokens_finished, strict=True):
        rows = int((~finished).sum())
        if rows == 0:
            continue
        pad = max_len - r.prefix_len
        for li, (k, v) in enumerate(caches[r.sequence]):
            k, v = k[:, :, : r.prefix_len], v[:, :, : r.prefix_len]
            if pad:
                k = torch.nn.functional.pad(k, (0, 0, pad, 0))
                v = torch.nn.functional.pad(v, (0, 0, pad, 0))
            per_layer_k[li].append(k.expand(rows, -1, -1, -1))
            per_layer_v[li].append(v.expand(rows, -1, -1, -1))
        mask = torch.ones(max_len, dtype=torch.long, device=k.device)
        mask[:pad] = 0
        masks.append(mask.expand(rows, -1))
    if not masks:
        return None, None
    capacity = max_len + max_new_tokens
    layers = [
        PreallocatedLayer(torch.cat(ks), torch.cat(vs), capacity)
        for ks, vs in zip(per_layer_k, per_layer_v, strict=True)
    ]
    return Cache(layers=layers), torch.cat(masks)
