"""`parameter_cosines` / `parameter_gram` against separate plain `torch.autograd.grad` calls."""

import math

import pytest
import torch

from gad_callbacks import parameter_cosines, parameter_gram
from tests.conftest import lora, tiny_model


def reference_vectors(model, ids, position, directions, params):
    """One forward and one plain autograd.grad per direction: the definition of J^T d."""
    vecs = []
    for d in directions:
        logits = model(input_ids=ids.unsqueeze(0)).logits[0, position]
        grads = torch.autograd.grad(logits, params, grad_outputs=d.to(logits.dtype), allow_unused=True)
        vecs.append(
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        )
    return torch.stack(vecs).double()


def reference_cosines(vecs):
    norms = vecs.norm(dim=1)
    cos = (vecs @ vecs.T) / (norms[:, None] * norms[None, :])
    cos[norms == 0] = float("nan")
    cos[:, norms == 0] = float("nan")
    return cos


def assert_close_with_nans(got, expected, atol):
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    mask = ~torch.isnan(expected)
    assert float((got[mask] - expected[mask]).abs().max()) < atol


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("tie", [False, True])
def test_full_parameters_match_separate_autograd(kind, tie):
    model = tiny_model(kind, tie=tie, layers=3).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 48, (16,), generator=g)
    directions = torch.randn(5, 48, generator=g)
    directions[3] = 0.0  # a zero direction: NaN row and column, not 0
    got = parameter_cosines(model, ids, 9, directions)
    params = [p for p in model.parameters() if p.requires_grad]
    expected = reference_cosines(reference_vectors(model, ids, 9, directions, params))
    assert_close_with_nans(got, expected, atol=1e-5)
    assert math.isnan(float(got[3, 0])) and math.isnan(float(got[0, 3]))


@pytest.mark.parametrize("params", ["trainable", "all"])
def test_lora_matches_separate_autograd(params):
    model = lora(tiny_model("qwen2", layers=2)).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 48, (12,), generator=g)
    directions = torch.randn(4, 48, generator=g)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    got = parameter_cosines(model, ids, 5, directions, params=params)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}, "requires_grad flags not restored"
    if params == "trainable":
        chosen = [p for p in model.parameters() if p.requires_grad]
        assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
        expected = reference_cosines(reference_vectors(model, ids, 5, directions, chosen))
    else:
        chosen = list(model.parameters())
        for p in chosen:
            p.requires_grad_(True)
        expected = reference_cosines(reference_vectors(model, ids, 5, directions, chosen))
    assert_close_with_nans(got, expected, atol=1e-5)


def test_segmented_equals_unsegmented_and_groups_leave_cross_terms_undefined():
    model = tiny_model("qwen2", layers=3, tie=True, dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 48, (20,), generator=g)
    rows = torch.tensor([4, 11, 17])
    cot = torch.randn(6, 3, 48, generator=g, dtype=torch.float64)
    seg = parameter_gram(model, ids, rows, cot)
    full = parameter_gram(model, ids, rows, cot, segmented=False)
    torch.testing.assert_close(seg, full, rtol=1e-10, atol=1e-12)
    grouped = parameter_gram(model, ids, rows, cot, groups=[[0, 1, 2], [3, 4, 5]])
    torch.testing.assert_close(grouped[:3, :3], full[:3, :3], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grouped[3:, 3:], full[3:, 3:], rtol=1e-10, atol=1e-12)
    assert bool(torch.isnan(grouped[:3, 3:]).all())


def test_sketch_approximates_exact_cosines():
    model = tiny_model("qwen2", layers=2).eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 48, (16,), generator=g)
    cot = torch.randn(4, 1, 48, generator=g)
    exact = parameter_gram(model, ids, torch.tensor([7]), cot)
    sketched = parameter_gram(model, ids, torch.tensor([7]), cot, sketch_dim=4096)
    norms_e, norms_s = exact.diagonal().sqrt(), sketched.diagonal().sqrt()
    cos_e = exact / (norms_e[:, None] * norms_e[None])
    cos_s = sketched / (norms_s[:, None] * norms_s[None])
    # CountSketch error on a cosine is O(1/sqrt(dim)) ~ 0.016 here.
    assert float((cos_e - cos_s).abs().max()) < 0.1
    # Deterministic: the hash depends only on coordinates and the parameter's index.
    torch.testing.assert_close(sketched, parameter_gram(model, ids, torch.tensor([7]), cot, sketch_dim=4096))


def test_probe_leaves_grad_params_and_modes_untouched():
    model = tiny_model("qwen2")
    model.train()
    model.model.layers[0].eval()  # a mixed-mode model: each module's own flag must come back
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 48, (10,))
    parameter_cosines(model, ids, 3, torch.randn(3, 48))
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
        assert torch.equal(p.grad, torch.full_like(p, 0.5))


def test_bad_shapes_raise():
    model = tiny_model("qwen2")
    ids = torch.randint(0, 48, (10,))
    with pytest.raises(ValueError, match="logits"):
        parameter_cosines(model, ids, 3, torch.randn(2, 50))
    with pytest.raises(ValueError, match="rows"):
        parameter_cosines(model, ids, 10, torch.randn(2, 48))
    with pytest.raises(ValueError, match="parameter space is empty"):
        frozen = tiny_model("qwen2")
        for p in frozen.parameters():
            p.requires_grad_(False)
        parameter_cosines(frozen, ids, 3, torch.randn(2, 48))


def test_parameter_subset_by_name_pattern():
    model = tiny_model("qwen2", layers=2).eval()
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 48, (10,), generator=g)
    directions = torch.randn(3, 48, generator=g)
    got = parameter_cosines(model, ids, 6, directions, params=r"mlp\.(up|down)_proj")
    chosen = [p for n, p in model.named_parameters() if "mlp.up_proj" in n or "mlp.down_proj" in n]
    assert len(chosen) == 4
    expected = reference_cosines(reference_vectors(model, ids, 6, directions, chosen))
    assert_close_with_nans(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="No parameter name matches"):
        parameter_cosines(model, ids, 6, directions, params="no_such_module")


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("tie", [False, True])
def test_embedding_gram_entries_come_from_activations_not_per_vector_gradients(kind, tie, monkeypatch):
    # The embedding matrices are the largest tensors of a real model: their Gram entries are inner products of
    # activations and cotangents, never B per-vector gradients. Repeated tokens (rows of the input embedding hit
    # twice), the padding id 0 (its row gets no gradient) and a tied matrix (cross terms) are all here.
    import gad_callbacks.engine.vjp as vjp

    model = tiny_model(kind, tie=tie, layers=2, dtype=torch.float64).eval()
    weights = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    g = torch.Generator().manual_seed(5)
    ids = torch.tensor([0, 5, 7, 5, 9, 0, 5, 11, 7, 3])
    rows = torch.tensor([3, 6, 9])
    cot = torch.randn(4, 3, 48, generator=g, dtype=torch.float64)
    materialised = []
    add = vjp._GramAccumulator.add
    monkeypatch.setattr(
        vjp._GramAccumulator, "add", lambda self, p, grad: (materialised.append(id(p)), add(self, p, grad))
    )
    got = parameter_gram(model, ids, rows, cot, params="all")
    assert materialised and not weights & set(materialised)
    materialised.clear()
    expected = parameter_gram(model, ids, rows, cot, params="all", segmented=False)  # every gradient materialised
    assert weights <= set(materialised)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
