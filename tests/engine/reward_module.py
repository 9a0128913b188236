"""Reward functions for `alignment_reward_funcs` entries given by dotted path (`tests.engine.reward_module.<name>`)."""

NOT_CALLABLE = 3


def mentions_reference(prompts, completions, reference, **columns):
    """1.0 when the completion's text contains the `reference` column, None when that reference is empty."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [None if not ref else float(ref in text) for text, ref in zip(texts, reference, strict=True)]
