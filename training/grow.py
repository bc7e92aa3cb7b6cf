"""Grow a trained network deeper without losing what it learned (Net2DeeperNet).

``training.train --arch spectral-deep --init zernike1`` starts the deeper spectral network
from the shipped ``spectral`` one: the layers both have are copied, and each extra 3 x 3
conv/BN/ReLU block starts as the identity (a Dirac kernel; BatchNorm set to undo its own
normalisation on a batch of real patches; the ReLU passes the non-negative activations it
receives). The grown network then computes what the trained one did, and fine-tuning starts
from there instead of from scratch (Chen, Goodfellow & Shlens, "Net2Net", ICLR 2016).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["deepen"]


def _blocks(net: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    mods = list(net.modules())
    out = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            bn = mods[i + 1] if i + 1 < len(mods) else None
            if not isinstance(bn, nn.BatchNorm2d):
                raise ValueError("every convolution must be followed by a BatchNorm2d")
            out.append((m, bn))
    return out


def _same(a: nn.Conv2d, b: nn.Conv2d) -> bool:
    return a.weight.shape == b.weight.shape and a.stride == b.stride and a.padding == b.padding


@torch.no_grad()
def deepen(net: nn.Module, trained: nn.Module, x: torch.Tensor) -> list[int]:
    """Load ``trained`` into the deeper ``net``; the extra conv blocks start as identities.

    Convolutions are matched in order: a block of ``net`` takes the next block of
    ``trained`` when their kernels, strides and paddings agree, else it must be an extra
    block (same channels in and out, stride 1, "same" padding) and is set to the identity
    on its input. An extra block must follow a ReLU (as every block of the spectral net
    does), so that its own ReLU passes what it receives. Every other tensor (the head)
    must match by name and shape.

    Parameters
    ----------
    net : torch.nn.Module
        The deeper network (conv -> BatchNorm2d -> ReLU blocks); changed in place.
    trained : torch.nn.Module
        The trained network, same layout without the extra blocks.
    x : torch.Tensor
        A batch of real network inputs: the extra blocks' BatchNorm is set from the
        statistics of their input on it, so the identity also holds in training mode
        (batch statistics) for batches like it.

    Returns
    -------
    list of int
        Indices (among ``net``'s convolutions) of the blocks set to the identity.

    Raises
    ------
    ValueError
        A block that matches nothing and cannot be an identity, a trained block left
        over, or another tensor that does not match.
    """
    mine, theirs = _blocks(net), _blocks(trained)
    extra: list[int] = []
    j = 0
    for i, (conv, bn) in enumerate(mine):
        if j < len(theirs) and _same(conv, theirs[j][0]):
            conv.load_state_dict(theirs[j][0].state_dict())
            bn.load_state_dict(theirs[j][1].state_dict())
            j += 1
            continue
        k = conv.kernel_size
        odd = k[0] % 2 == 1 and k[1] % 2 == 1
        keeps_shape = odd and conv.stride == (1, 1) and conv.padding == (k[0] // 2, k[1] // 2)
        if conv.in_channels != conv.out_channels or not keeps_shape or conv.groups != 1:
            raise ValueError(f"convolution {i} ({conv}) matches no trained layer")
        nn.init.dirac_(conv.weight)  # zeros, then the centre tap of channel c -> c
        if conv.bias is not None:
            conv.bias.zero_()
        extra.append(i)
    if j != len(theirs):
        raise ValueError(f"{len(theirs) - j} trained convolutions have no place in the network")
    layered = {n for n, m in trained.named_modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)}
    own = net.state_dict()
    for name, t in trained.state_dict().items():
        if name.rsplit(".", 1)[0] in layered:
            continue  # copied with its block above
        if name not in own or own[name].shape != t.shape:
            raise ValueError(f"tensor {name} {tuple(t.shape)} has no match in the network")
        own[name].copy_(t)
    # BatchNorm of the extra blocks: from the statistics of their input on the batch in
    # training mode (as fine-tuning will see it), the affine parameters that undo the
    # normalisation, and running statistics equal to them (exact identity in eval mode)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    hooks = []
    for i in extra:
        conv, bn = mine[i]

        def grab(_m: nn.Module, inp: tuple[torch.Tensor, ...], bn: nn.BatchNorm2d = bn) -> None:
            a = inp[0].double()
            mean, var = a.mean(dim=(0, 2, 3)), a.var(dim=(0, 2, 3), unbiased=False)
            for t, v in ((bn.bias, mean), (bn.weight, torch.sqrt(var + bn.eps)),
                         (bn.running_mean, mean), (bn.running_var, var)):  # fmt: skip
                if t is None:
                    raise ValueError("the extra blocks' BatchNorm must be affine and track stats")
                t.copy_(v)

        hooks.append(conv.register_forward_pre_hook(grab))
    was = net.training
    try:
        for bn in bns:
            bn.momentum = 0.0  # the pass below leaves every running statistic as it is
        net.train()
        net(x)
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        for h in hooks:
            h.remove()
        net.train(was)
    return extra
