"""Domain-specific BN and images-per-BN (docs/method.md#dsbn, #training-loop, #published-results) against plain BN references."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spcl.models import (
    DomainSpecificBatchNorm,
    SubBatchNorm1d,
    SubBatchNorm2d,
    build_encoder,
    convert_bn,
    convert_dsbn,
    get_images_per_bn,
    num_bn_domains,
    set_domain,
    set_images_per_bn,
    use_domain,
)


def _tiny_model(seed: int = 0) -> nn.Module:
    """conv -> BN2d -> pool -> linear -> BN1d: every cross-sample interaction is a BN."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
        nn.BatchNorm1d(6),
    )
    for m in model.modules():  # non-trivial affine parameters and running statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model


def _bns(model: nn.Module) -> list[nn.Module]:
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, SubBatchNorm1d, SubBatchNorm2d)
    return [m for m in model.modules() if type(m) in kinds]


def _assert_stats_equal(bns_a: list[nn.Module], bns_b: list[nn.Module]) -> None:
    assert len(bns_a) == len(bns_b)
    for a, b in zip(bns_a, bns_b):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)


def _average_stats(models: list[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    per_model = [_bns(m) for m in models]
    return [
        (
            torch.stack([bns[i].running_mean for bns in per_model]).mean(0),
            torch.stack([bns[i].running_var for bns in per_model]).mean(0),
        )
        for i in range(len(per_model[0]))
    ]


def test_train_halves_match_plain_bn_on_each_half() -> None:
    plain = _tiny_model()
    x = torch.randn(10, 3, 5, 4)
    dsbn = convert_dsbn(copy.deepcopy(plain)).train()
    out = dsbn(x)
    source_ref, target_ref = copy.deepcopy(plain).train(), copy.deepcopy(plain).train()
    torch.testing.assert_close(out[:5], source_ref(x[:5]))
    torch.testing.assert_close(out[5:], target_ref(x[5:]))
    # each branch updated its running statistics from its own half only
    branches = [m for m in dsbn.modules() if isinstance(m, DomainSpecificBatchNorm)]
    assert len(branches) == 2 and num_bn_domains(dsbn) == 2
    _assert_stats_equal([b.branches[0] for b in branches], _bns(source_ref))
    _assert_stats_equal([b.branches[1] for b in branches], _bns(target_ref))
    with pytest.raises(ValueError, match="equal domain parts"):
        dsbn(x[:9])


def test_eval_uses_target_branch_then_source_after_set_domain() -> None:
    plain = _tiny_model()
    dsbn = convert_dsbn(copy.deepcopy(plain)).train()
    for _ in range(3):  # make the branches differ
        dsbn(torch.cat([torch.randn(4, 3, 5, 4) + 2.0, torch.randn(4, 3, 5, 4) - 1.0]))
    dsbn.eval()
    x = torch.randn(3, 3, 5, 4)
    target_model = convert_bn(copy.deepcopy(dsbn), domain=1).eval()
    source_model = convert_bn(copy.deepcopy(dsbn), domain=0).eval()
    assert not torch.allclose(target_model(x), source_model(x))
    torch.testing.assert_close(dsbn(x), target_model(x))
    with use_domain(dsbn, 0):
        torch.testing.assert_close(dsbn(x), source_model(x))
    torch.testing.assert_close(dsbn(x), target_model(x))  # restored
    assert set_domain(dsbn, 0) == -1
    torch.testing.assert_close(dsbn(x), source_model(x))
    with pytest.raises(IndexError):
        set_domain(dsbn, 2)


def test_convert_bn_is_the_inverse() -> None:
    plain = _tiny_model().eval()
    restored = convert_bn(convert_dsbn(copy.deepcopy(plain), num_domains=3), domain=-1).eval()
    assert [type(m) for m in restored.modules()] == [type(m) for m in plain.modules()]
    assert restored.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(4, 3, 5, 4)
    assert torch.equal(restored(x), plain(x))
    assert num_bn_domains(restored) == 1


def test_any_number_of_domains() -> None:
    plain = _tiny_model()
    x = torch.randn(9, 3, 5, 4)
    dsbn = convert_dsbn(copy.deepcopy(plain), num_domains=3).train()
    out = dsbn(x)
    for d in range(3):
        part = slice(3 * d, 3 * d + 3)
        torch.testing.assert_close(out[part], copy.deepcopy(plain).train()(x[part]))
    assert convert_dsbn(dsbn, num_domains=3) is dsbn  # converting twice is a no-op
    with pytest.raises(ValueError, match="already"):
        convert_dsbn(dsbn, num_domains=2)


def test_frozen_bias_quirk_is_explicit() -> None:
    encoder = build_encoder("resnet18", pretrained=False)
    assert not encoder.neck.bias.requires_grad
    reference = convert_dsbn(copy.deepcopy(encoder))  # default reproduces the reference
    assert all(b.bias.requires_grad for b in reference.neck.branches)
    kept = convert_dsbn(copy.deepcopy(encoder), keep_requires_grad=True)
    assert not any(b.bias.requires_grad for b in kept.neck.branches)
    assert all(b.weight.requires_grad for b in kept.neck.branches)


@pytest.mark.parametrize("batch", [12, 10, 3])
@pytest.mark.parametrize("dims", [1, 2])
def test_sub_batch_bn_equals_separate_bn_calls(batch: int, dims: int) -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5) if dims == 2 else nn.BatchNorm1d(5)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    bn.running_var.fill_(2.0)
    shape = (batch, 5, 3, 2) if dims == 2 else (batch, 5)
    x = torch.randn(shape) * 3 + 1
    chunks = x.split(4)  # 12 -> 4,4,4; 10 -> 4,4,2 (last chunk smaller); 3 -> one chunk
    refs = [copy.deepcopy(bn).train() for _ in chunks]
    xr = [c.clone().requires_grad_(True) for c in chunks]
    expected = torch.cat([r(c) for r, c in zip(refs, xr)])

    sub = set_images_per_bn(copy.deepcopy(bn), 4).train()
    assert isinstance(sub, SubBatchNorm2d if dims == 2 else SubBatchNorm1d)
    xs = x.clone().requires_grad_(True)
    out = sub(xs)
    torch.testing.assert_close(out, expected)
    # gradients: input and affine parameters
    weights = torch.randn(shape)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(xs.grad, torch.cat([c.grad for c in xr]))
    torch.testing.assert_close(sub.weight.grad, sum(r.weight.grad for r in refs))
    torch.testing.assert_close(sub.bias.grad, sum(r.bias.grad for r in refs))
    # documented rule: running statistics = average of the chunks' statistics
    torch.testing.assert_close(sub.running_mean, torch.stack([r.running_mean for r in refs]).mean(0))
    torch.testing.assert_close(sub.running_var, torch.stack([r.running_var for r in refs]).mean(0))
    assert sub.num_batches_tracked.item() == 1
    # evaluation: running statistics, as plain BN
    plain = copy.deepcopy(bn)
    plain.load_state_dict(sub.state_dict())
    sub.eval(), plain.eval()
    torch.testing.assert_close(sub(x), plain(x))


def test_set_images_per_bn_shares_parameters_and_reverts() -> None:
    model = _tiny_model()
    params = [id(p) for p in model.parameters()]
    set_images_per_bn(model, 4)
    assert get_images_per_bn(model) == 4
    assert [id(p) for p in model.parameters()] == params  # an existing optimizer stays valid
    set_images_per_bn(model, None)
    assert get_images_per_bn(model) is None
    assert [type(m) for m in model.modules()] == [type(m) for m in _tiny_model().modules()]
    assert [id(p) for p in model.parameters()] == params
    with pytest.raises(ValueError):
        set_images_per_bn(model, -1)


@pytest.mark.parametrize("order", ["dsbn_first", "images_per_bn_first"])
def test_dsbn_composes_with_images_per_bn(order: str) -> None:
    plain = _tiny_model()
    model = copy.deepcopy(plain)
    if order == "dsbn_first":
        model = set_images_per_bn(convert_dsbn(model), 3)
    else:
        model = convert_dsbn(set_images_per_bn(model, 3))
    assert get_images_per_bn(model) == 3 and num_bn_domains(model) == 2
    x = torch.randn(12, 3, 5, 4)
    out = model.train()(x)
    # domain parts 0:6 and 6:12, each normalised in chunks of 3, i.e. four separate plain runs
    refs = [copy.deepcopy(plain).train() for _ in range(4)]
    expected = torch.cat([r(c) for r, c in zip(refs, x.split(3))])
    torch.testing.assert_close(out, expected)
    dsbns = [m for m in model.modules() if isinstance(m, DomainSpecificBatchNorm)]
    for domain, pair in enumerate((refs[:2], refs[2:])):
        for layer, (mean, var) in zip(dsbns, _average_stats(pair)):
            torch.testing.assert_close(layer.branches[domain].running_mean, mean)
            torch.testing.assert_close(layer.branches[domain].running_var, var)
