"""Checks for the "check yourself" exercises of notebook 00 (setup and tour).

Every expected value is computed here with lorakit (the shipped tiny model, ``apply_lora``), never
hard-coded.
"""

from __future__ import annotations

import torch

from lorakit.check import grade_choice, grade_value, report
from lorakit.data import BOS, TOKEN_ID, VOCAB, encode
from lorakit.models import load_tiny_lm
from lorakit.peft import LoRAConfig, apply_lora, trainable_parameters

#: Exercise 00.1: LoRA on the attention query and value projections only (PEFT's default targets).
Q1_CONFIG = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
#: Exercise 00.3: the prompt word given to the base model under the ``>`` marker.
Q3_WORD = "hello"


def expected_q1() -> int:
    """Trainable parameters of the tiny LM after ``apply_lora`` with :data:`Q1_CONFIG` (eq. r(d_in+d_out))."""
    model = apply_lora(load_tiny_lm(), LoRAConfig(**Q1_CONFIG))
    return trainable_parameters(model)[0]


def q1(answer: object) -> bool:
    """00.1: how many parameters does LoRA(r=4, q_proj and v_proj) train on the tiny model?"""
    return grade_value(
        "00.1", answer, expected_q1(),
        hint="each adapted layer trains r*(d_in + d_out); count the q_proj and v_proj layers of both blocks",
    )


def q2(answer: object) -> bool:
    """00.2: why is the base model's Caesar exact-match 0?"""
    return grade_choice("00.2", answer, "b", {
        "a": "no: '>' was in pretraining (the shift-by-one task uses it); the model reads it fine",
        "b": "yes: under '>' it confidently applies the shift it was pretrained on, by one, not by three",
        "c": "no: the weights are pretrained (copy and rot1 are 100% correct on held-out words)",
        "d": "no: the vocabulary has every letter; one token per letter, nothing is unknown",
    })


@torch.no_grad()
def greedy_answer(word: str, sep: str = ">", max_len: int = 10) -> str:
    """What the shipped base model writes after ``<s> word sep`` (greedy, up to the final ``.``)."""
    model = load_tiny_lm()
    ids = encode([BOS, *word, sep])
    out = []
    for _ in range(max_len):
        nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
        if nxt == TOKEN_ID["."]:
            break
        out.append(VOCAB[nxt])
        ids.append(nxt)
    return "".join(out)


def q3(answer: object) -> bool:
    """00.3: what does the base model answer for ``hello>``? (a string of letters, without the '.')."""
    hint = "the model was pretrained on word>rot1(word); lorakit.data.shift_word helps"
    if answer is None:
        return report("00.3", None, hint=hint)
    expected = greedy_answer(Q3_WORD)
    if not isinstance(answer, str):
        return report("00.3", False, f"expected a string, got {type(answer).__name__}", hint)
    got = answer.strip().rstrip(".")
    if got == expected:
        return report("00.3", True, f"the base model writes {expected!r}: a shift by one, not Caesar's three")
    return report("00.3", False, f"got {answer!r}", hint)


def q4(answer: object, eval_steps: list[int], exact_match: list[float], threshold: float = 0.9) -> bool:
    """00.4: the first evaluated step of the tour's run whose held-out exact-match reaches ``threshold``."""
    from lorakit.results import steps_to_threshold

    expected = steps_to_threshold(eval_steps, exact_match, threshold)
    hint = f"walk along (eval_steps, exact_match) and stop at the first value >= {threshold}"
    if answer is None:
        return report("00.4", None, hint=hint)
    if expected is None:
        return grade_choice("00.4", answer, "none", {"none": "the run never reached the threshold"})
    if isinstance(answer, bool) or not isinstance(answer, int):
        return report("00.4", False, f"expected a step number (an int), got {answer!r}", hint)
    if answer == expected:
        return report("00.4", True, f"step {expected}: before it the curve sits on a plateau, then it jumps")
    return report("00.4", False, f"got step {answer}", hint)
