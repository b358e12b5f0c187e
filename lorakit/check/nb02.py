"""Checks for notebook 02 (initialization: which starts learn, and what they do to the base model).

Each function takes the learner's answer (``None``: not answered yet), computes the expected one with
lorakit / from its arguments, prints one verdict line and returns True/False.
"""

from __future__ import annotations

import copy

import torch

from lorakit.check import grade_choice, grade_value, report
from lorakit.lora import LoRALinear

__all__ = ["q1", "q2", "q3", "q4", "q5", "first_nonzero_grad_step"]

_CASES = {
    "a": "A Kaiming, B = 0 (PEFT's default)",
    "b": "A = 0 and B = 0",
    "c": "A = 0, B random",
    "d": "A random and B random",
}


def q1(answer: object) -> bool:
    """02.1: which of the four initialisations never learns (notebook 02, gradient table, eqs. 2-3)."""
    explanations = {
        "a": "no: dL/dB = s g (Ax)^T is non-zero at step 0, so B moves on the first step",
        "b": "A = B = 0 makes both gradients s g (Ax)^T and s B^T g x^T exactly zero, at every step",
        "c": "no: dL/dA = s B^T g x^T is non-zero at step 0, so A moves first and B follows",
        "d": "no: it learns (both gradients are non-zero), it just starts from a damaged model",
    }
    return grade_choice("02.1", answer, "b", explanations)


def _lora_grad_A(layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """dL/dA for ``L = 0.5 * ||layer(x)||^2`` computed by autograd on a copy of ``layer``."""
    clone = copy.deepcopy(layer)
    clone.zero_grad(set_to_none=True)
    out = clone(x)
    (0.5 * out.pow(2).sum()).backward()
    return clone.lora_A.grad.detach().clone()


def q2(answer: object, layer: LoRALinear, x: torch.Tensor) -> bool:
    """02.2: dL/dA at step 0 for ``L = 0.5 ||layer(x)||^2`` when B = 0 (notebook 02, eq. 3)."""
    if not isinstance(layer, LoRALinear):
        raise TypeError(f"layer must be a LoRALinear, got {type(layer).__name__}")
    expected = _lora_grad_A(layer, x)
    return grade_value(
        "02.2", answer, expected, atol=1e-7,
        hint="dL/dA = s * B^T g x^T: what is B^T times anything when B = 0? Give a tensor shaped like lora_A",
    )


def first_nonzero_grad_step(
    in_features: int = 16, out_features: int = 12, r: int = 4, lr: float = 1e-3, max_steps: int = 5, seed: int = 0
) -> int:
    """Optimizer steps taken before ``lora_A`` first receives a non-zero gradient under the default init.

    Trains a fresh ``LoRALinear(init="kaiming")`` with AdamW on a random regression target and
    returns how many ``optimizer.step()`` calls happened before the gradient of A was non-zero.
    """
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        base.weight.copy_(torch.randn(out_features, in_features, generator=gen))
        base.bias.zero_()
        layer = LoRALinear(base, r=r, alpha=2 * r)
        layer.lora_A.copy_(torch.rand(r, in_features, generator=gen) - 0.5)
    x = torch.randn(32, in_features, generator=gen)
    y = torch.randn(32, out_features, generator=gen)
    opt = torch.optim.AdamW([layer.lora_A, layer.lora_B], lr=lr, weight_decay=0.0)
    for step in range(max_steps):
        opt.zero_grad(set_to_none=True)
        loss = (layer(x) - y).pow(2).mean()
        loss.backward()
        if bool(layer.lora_A.grad.abs().max() > 0):
            return step
        opt.step()
    raise RuntimeError(f"A never received a non-zero gradient within {max_steps} steps")


def q3(answer: object) -> bool:
    """02.3: optimizer steps before A first gets a non-zero gradient with A Kaiming, B = 0."""
    hint = "at step 0 B = 0, so dL/dA = s B^T g x^T = 0; when does B stop being zero?"
    if answer is None:
        return report("02.3", None, hint=hint)
    if isinstance(answer, bool) or not isinstance(answer, int):
        return report("02.3", False, f"give a whole number of steps, got {answer!r}", hint)
    expected = first_nonzero_grad_step()
    if answer == expected:
        return report("02.3", True, f"{expected} step: B moves first, then A's gradient s B^T g x^T is non-zero")
    return report("02.3", False, f"got {answer}", hint)


def q4(answer: object, base_loss: float, perturbed_loss: float, tol: float = 1e-3) -> bool:
    """02.4: does the held-out rot1 loss go up, down, or stay when both A and B start random?

    The correct option is read off the two measured losses (base model vs both-random start).
    """
    if perturbed_loss > base_loss + tol:
        correct = "up"
    elif perturbed_loss < base_loss - tol:
        correct = "down"
    else:
        correct = "same"
    explanations = {
        "up": f"{'yes' if correct == 'up' else 'no'}: s B A != 0 moves every adapted layer away from W0 at step 0; "
              f"measured {base_loss:.3g} -> {perturbed_loss:.3g}",
        "down": f"{'yes' if correct == 'down' else 'no'}: measured {base_loss:.3g} -> {perturbed_loss:.3g}",
        "same": f"{'yes' if correct == 'same' else 'no'}: that holds only when B A = 0 (one factor zero); "
                f"measured {base_loss:.3g} -> {perturbed_loss:.3g}",
    }
    return grade_choice("02.4", answer, correct, explanations)


def q5(answer: object, weight: torch.Tensor, r: int) -> bool:
    """02.5: the largest singular value of PiSSA's residual ``W0 - s B A`` (Meng et al., 2024)."""
    if not (isinstance(weight, torch.Tensor) and weight.dim() == 2):
        raise TypeError("weight must be a 2-D tensor (the layer's original W0)")
    expected = float(torch.linalg.svdvals(weight.double())[r])
    return grade_value(
        "02.5", answer, expected, rtol=1e-4,
        hint="the residual keeps the singular triplets r+1, r+2, ... of W0 (0-based index r)",
    )
