"""Checkers for notebook 10 (AdaLoRA), "Check yourself" section.

Expected values come from :mod:`lorakit.adalora` (the budget schedule, eq. 6; the triplet score,
eq. 5; the SVDLinear parameter count) evaluated at the exercise's parameters; nothing is hard-coded.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.adalora import SVDLinear, budget_schedule, triplet_score
from lorakit.check import grade_callable, grade_choice, grade_value, report

__all__ = ["q1", "q2", "q3", "q4", "q5", "Q1", "Q2_IN", "Q2_OUT", "Q2_R", "Q2_KEPT"]

#: Exercise 1: 14 layers, init_r = 12 -> 168; target_r = 4 -> 56; the step asked about.
Q1 = {"init_budget": 12 * 14, "target_budget": 4 * 14, "tinit": 50, "tfinal": 100, "deltaT": 10,
      "total_step": 300, "step": 125}
#: Exercise 2: an SVDLinear over nn.Linear(Q2_IN, Q2_OUT) with r = Q2_R, of which Q2_KEPT survive.
Q2_IN, Q2_OUT, Q2_R, Q2_KEPT = 128, 256, 12, 5


def q1(answer: object) -> bool:
    """10.1: the total rank budget at ``Q1["step"]`` under the cubic schedule (eq. 6), an int."""
    q = dict(Q1)
    step = q.pop("step")
    want, _ = budget_schedule(step, **q)
    hint = "b(t) = int(target + (init - target) * (1 - (t - tinit) / (T - tfinal - tinit))**3)"
    if answer is None:
        return report("10.1", None, hint=hint)
    if isinstance(answer, float) and answer != int(answer):
        return report("10.1", False, f"got {answer}; PEFT truncates the budget to an int", hint)
    return grade_value("10.1", answer, want, hint=hint)


def q2(answer: object) -> bool:
    """10.2: ``(trainable parameters at r = Q2_R, parameters left after pruning to Q2_KEPT)`` of one SVDLinear."""
    layer = SVDLinear(nn.Linear(Q2_IN, Q2_OUT), r=Q2_R)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    kept = trainable // Q2_R * Q2_KEPT  # each singular triplet owns one row of A, one of E, one column of B
    hint = "each triplet i owns a row of A (in numbers), a column of B (out numbers) and one lambda_i"
    if answer is None:
        return report("10.2", None, hint=hint)
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return report("10.2", False, f"expected a pair (trainable, kept), got {answer!r}", hint)
    if list(answer) == [trainable, kept]:
        return report("10.2", True, f"{trainable} trainable, {kept} left after pruning to rank {Q2_KEPT}")
    if list(answer) == [Q2_R * (Q2_IN + Q2_OUT), Q2_KEPT * (Q2_IN + Q2_OUT)]:
        return report("10.2", False, "that is LoRA's count: AdaLoRA also trains the r singular values", hint)
    return report("10.2", False, f"got {answer!r}", hint)


def _cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(10)
    cases = []
    for r, n_in, n_out in ((3, 5, 4), (1, 7, 2), (6, 6, 9)):
        cases.append((torch.rand(r, n_in, generator=gen), torch.rand(r, 1, generator=gen),
                      torch.rand(n_out, r, generator=gen)))
    return cases


def q3(fn: object) -> bool:
    """10.3: a function ``(score_A [r, in], score_E [r, 1], score_B [out, r]) -> [r]`` triplet scores (eq. 5)."""
    return grade_callable("10.3", fn, triplet_score, _cases(),  # type: ignore[arg-type]
                          hint="s(lambda_i) + mean over row i of s(A) + mean over column i of s(B); return shape [r]")


def q4(answer: object) -> bool:
    """10.4 (choice): where ``update_and_allocate`` goes in the training step."""
    return grade_choice("10.4", answer, "c", {
        "a": "before backward() there is no gradient yet: the sensitivity |w * dL/dw| needs .grad "
             "(lorakit raises a ValueError).",
        "b": "after zero_grad() the gradients are gone (None): lorakit raises, PEFT crashes.",
        "c": "after backward() and optimizer.step(), before zero_grad(): the gradients are still there, and the "
             "mask is applied to the freshly updated lambda (PEFT's documented order).",
        "d": "it must run every step: the EMAs need every gradient, and deltaT is handled inside it.",
    })


def q5(answer: object) -> bool:
    """10.5 (choice): what is true of ``P Λ Q`` in AdaLoRA."""
    return grade_choice("10.5", answer, "b", {
        "a": "nothing forces P and Q to be orthogonal; the regulariser only pulls them towards it, so "
             "P Λ Q is an SVD only approximately.",
        "b": "right: no SVD is ever computed; orthogonality is only encouraged, and pruning zeroes lambda_i "
             "(the row of Q and column of P stay in memory and keep training).",
        "c": "AdaLoRA never computes an SVD; that is the point of the parameterisation (an SVD per step "
             "would cost O(min(d,k)^2 max(d,k)) per matrix).",
        "d": "masking lambda_i keeps the row of Q and the column of P (they still get gradients); only "
             "PEFT's save step slices them away.",
    })
