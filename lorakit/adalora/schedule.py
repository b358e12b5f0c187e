"""AdaLoRA's cubic rank-budget schedule (notebook 10, eq. 6), and the checks of its integer arguments.

The total rank budget (the sum of every layer's rank) stays at ``init_budget`` for the ``tinit`` warm-up
steps, then decays as a cubic to ``target_budget`` at step ``total_step - tfinal``, and stays there for the
last ``tfinal`` steps (PEFT's ``RankAllocator.budget_schedule``)::

    b(t) = init                                                       t <= tinit
    b(t) = target + (init - target) (1 - (t - tinit) / (T - tfinal - tinit))³     (masking when t % deltaT == 0)
    b(t) = target                                                     t > T - tfinal   (masking every step)
"""

from __future__ import annotations

import numbers

__all__ = ["budget_schedule", "check_beta", "check_int", "check_schedule"]


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as a Python int ``>= minimum`` (NumPy integers accepted); TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_beta(name: str, value: object) -> float:
    """An EMA coefficient in the open interval (0, 1), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(value).__name__} {value!r}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1) (an EMA coefficient), got {value}")
    return float(value)


def check_schedule(tinit: object, tfinal: object, deltaT: object, total_step: object) -> tuple[int, int, int, int]:
    """The four schedule integers, checked (PEFT's rule: ``tinit < total_step - tfinal``); returned as ints."""
    total_step = check_int("total_step", total_step, 1)
    tinit = check_int("tinit", tinit, 0)
    tfinal = check_int("tfinal", tfinal, 0)
    deltaT = check_int("deltaT", deltaT, 1)
    if tinit >= total_step - tfinal:
        raise ValueError(
            f"tinit={tinit} must be < total_step - tfinal = {total_step} - {tfinal}: "
            "the schedule leaves no budgeting phase (decrease tinit/tfinal or increase total_step)"
        )
    return tinit, tfinal, deltaT, total_step


def budget_schedule(
    step: int, init_budget: int, target_budget: int, tinit: int, tfinal: int, deltaT: int, total_step: int
) -> tuple[int, bool]:
    """``(total rank budget, mask at this step?)``: PEFT's ``RankAllocator.budget_schedule`` (notebook 10, eq. 6).

    ``step <= tinit``: ``(init_budget, False)`` (warm-up); ``step > total_step - tfinal``:
    ``(target_budget, True)`` (final phase); in between the cubic decay
    ``int(target + (init - target) * (1 - (step - tinit) / (total_step - tfinal - tinit))**3)``,
    masking when ``step % deltaT == 0``.
    """
    step = check_int("step", step, 0)
    init_budget = check_int("init_budget", init_budget, 0)
    target_budget = check_int("target_budget", target_budget, 0)
    if target_budget > init_budget:
        raise ValueError(f"target_budget={target_budget} must be <= init_budget={init_budget} (AdaLoRA only prunes)")
    tinit, tfinal, deltaT, total_step = check_schedule(tinit, tfinal, deltaT, total_step)
    if step <= tinit:
        return init_budget, False
    if step > total_step - tfinal:
        return target_budget, True
    mul_coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)
    budget = int((init_budget - target_budget) * (mul_coeff**3) + target_budget)
    return budget, step % deltaT == 0
