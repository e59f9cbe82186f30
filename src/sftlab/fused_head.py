"""The output layer's loss in chunks, each chunk's gradients computed in the forward pass.

Gemma-3's output layer has 262,144 rows: the logits of a few hundred labelled positions, and
their gradients, are the largest tensors of a training step. `chunked_loss_sum` runs the
output layer on `chunk_size` positions at a time and, for each chunk, computes the gradients of
its loss for the hidden states and for the output layer's trainable parameters (the tied
`<end_of_turn>` row) right away, so its logits are freed before the next chunk; the backward
pass only scales the stored gradients. Same loss and gradients as one pass over every position
(tests/test_train.py), no product run twice.

Hand-written because neither TRL nor PEFT has one for a CPU: Liger's fused linear
cross-entropy does this on GPUs (Triton), and TRL's fused LM head scores every position and
reads `lm_head.bias`, which PEFT's trainable-token wrapper on a tied head does not expose.
Activation checkpointing (`torch.utils.checkpoint`) frees the logits too, but runs the
[positions x 262144] product again in backward: a fifth of a step on a 2-core AVX2 CPU
(benchmarks/README.md). Imported only when a chunked loss is first computed.
"""

from __future__ import annotations

from typing import Callable

import torch


class _FusedChunkedLoss(torch.autograd.Function):
    """Summed `loss_fn` over `chunk_size`-row chunks of `hidden`, gradients computed in forward.

    `loss_fn(h, targets)` is a black box (PEFT wrappers, the trainable row, Gemma's softcap):
    each chunk runs it and `torch.autograd.grad` for `h` and `params`. `params` are inputs of
    the Function so that their gradients reach the optimizer (and DDP's hooks) through the
    usual backward pass.
    """

    @staticmethod
    def forward(ctx, loss_fn, chunk_size, hidden, targets, *params):
        grad_hidden = torch.empty_like(hidden)
        grad_params = [torch.zeros_like(p) for p in params]
        total = hidden.new_zeros((), dtype=torch.float32)
        with torch.enable_grad():
            for i in range(0, hidden.shape[0], chunk_size):
                h = hidden[i:i + chunk_size].detach().requires_grad_(True)
                loss = loss_fn(h, targets[i:i + chunk_size])
                grads = torch.autograd.grad(loss, [h, *params], allow_unused=True)
                grad_hidden[i:i + chunk_size] = grads[0]
                for acc, g in zip(grad_params, grads[1:]):
                    if g is not None:  # a parameter this chunk's loss does not reach
                        acc += g
                total += loss.detach().float()
        ctx.save_for_backward(grad_hidden, *grad_params)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, *grad_params = ctx.saved_tensors
        return (None, None, grad_hidden * grad_out.to(grad_hidden.dtype), None,
                *(g * grad_out.to(g.dtype) for g in grad_params))


def chunked_loss_sum(loss_fn: Callable, chunk_size: int, hidden, targets, params: list) -> torch.Tensor:
    """`sum(loss_fn(hidden[chunk], targets[chunk]))` over chunks of `chunk_size` rows, differentiable
    in `hidden` and `params` (the parameters `loss_fn` trains), with each chunk's intermediates
    freed in the forward pass. Use under autograd only; without gradients, sum the chunks directly."""
    return _FusedChunkedLoss.apply(loss_fn, chunk_size, hidden, targets, *params)
