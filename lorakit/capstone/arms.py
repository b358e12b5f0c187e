"""The capstone's methods: how each one adapts MiniLM-L6, and its learning-rate grid (notebook 11, §2).

Every arm starts from the same pretrained encoder and a fresh head (seeded), and trains the head plus what the
method makes trainable; the rest stays frozen. Targets use Hugging Face BERT's module names:
``query``/``key``/``value`` (attention), ``attention.output.dense`` (W_o), ``intermediate.dense`` (FFN up) and
``output.dense`` (FFN down); "all linear" means all six in every layer (the pooler is not used, so not adapted).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.adalora import AdaLoRAConfig, apply_adalora
from lorakit.family import (
    AdapterConfig,
    BitFitConfig,
    IA3Config,
    PromptTuningConfig,
    VeRAConfig,
    apply_adapters,
    apply_bitfit,
    apply_ia3,
    apply_prompt_tuning,
    apply_vera,
)
from lorakit.nf4 import dequantize_4bit, quantize_4bit
from lorakit.peft import LoRAConfig, apply_lora
from lorakit.qlora import apply_qlora
from lorakit.qlora.checks import quant_code

__all__ = ["ARMS", "ATTENTION_TARGETS", "Arm", "LINEAR_TARGETS", "TARGET_SETS", "arms_for", "lora_arm",
           "lora_qv_peft_init", "peft_order_init", "qlora_arm",
           "quantized_base_arm", "targets_regex"]

#: Regex (PEFT's full-match rule) for each weight type of every encoder layer.
TARGET_SETS: dict[str, str] = {
    "q": "query", "k": "key", "v": "value", "o": r"attention\.output\.dense",
    "up": "intermediate\\.dense", "down": r"(?<!attention\.)output\.dense",
}
ATTENTION_TARGETS = ("q", "k", "v", "o")
LINEAR_TARGETS = ("q", "k", "v", "o", "up", "down")


def targets_regex(kinds: tuple[str, ...] | list[str]) -> str:
    """A full-match regex selecting the weight types ``kinds`` (keys of :data:`TARGET_SETS`) in every layer."""
    if isinstance(kinds, str) or not kinds or any(k not in TARGET_SETS for k in kinds):
        raise ValueError(f"kinds must be a non-empty sequence of {sorted(TARGET_SETS)}, got {kinds!r}")
    return r"encoder\.layer\.\d+\.(?:attention\.self\.)?(?:" + "|".join(TARGET_SETS[k] for k in kinds) + ")"


@dataclass(frozen=True)
class Arm:
    """``adapt(encoder) -> encoder`` (in place, or a wrapper), the lr grid, and how the loop must treat it."""

    name: str
    label: str
    adapt: Callable[[nn.Module], nn.Module]
    lrs: tuple[float, ...]
    kind: str = "adapter"  # "adapter", "full", "probe", "adalora", "loraplus"
    options: dict = field(default_factory=dict)


def lora_arm(name: str, label: str, kinds: tuple[str, ...], r: int = 8, alpha: float = 16,
             lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2), **lora_kw: object) -> Arm:
    """A LoRA-style arm (any :class:`~lorakit.peft.LoRAConfig` option: ``rslora``, ``use_dora``, ``init``)."""
    config = LoRAConfig(r=r, alpha=alpha, target_modules=targets_regex(kinds), **lora_kw)
    return Arm(name, label, lambda enc: apply_lora(enc, config), lrs, options={"r": r, "alpha": alpha, **lora_kw})


def peft_order_init(encoder: nn.Module, rng_state: torch.Tensor) -> None:
    """Redraw every LoRA ``A`` as PEFT draws it from the same RNG state, so that both libraries start equal.

    PEFT builds ``lora_A = nn.Linear(in, r)`` and ``lora_B = nn.Linear(r, out)`` (each constructor draws a
    Kaiming-uniform weight), then re-initialises A with Kaiming-uniform (a=sqrt(5)) and zeroes B; lorakit draws
    A once. Same distribution, different stream: this replays PEFT's three draws per layer, in module order.
    """
    from lorakit.peft import lora_layers

    torch.set_rng_state(rng_state)
    with torch.no_grad():
        for layer in lora_layers(encoder).values():
            nn.init.kaiming_uniform_(torch.empty_like(layer.lora_A), a=math.sqrt(5))  # nn.Linear(in, r)'s draw
            nn.init.kaiming_uniform_(torch.empty_like(layer.lora_B), a=math.sqrt(5))  # nn.Linear(r, out)'s draw
            nn.init.kaiming_uniform_(layer.lora_A, a=math.sqrt(5))  # reset_lora_parameters
            layer.lora_B.zero_()


def lora_qv_peft_init(encoder: nn.Module) -> nn.Module:
    """LoRA r=8 on W_q, W_v with PEFT's initial A (:func:`peft_order_init`): the twin of the PEFT arm."""
    state = torch.get_rng_state()
    apply_lora(encoder, LoRAConfig(r=8, alpha=16, target_modules=targets_regex(("q", "v"))))
    peft_order_init(encoder, state)
    return encoder


def _qlora(quant_type: str, double_quant: bool = True) -> Callable[[nn.Module], nn.Module]:
    config = LoRAConfig(r=8, alpha=16, target_modules=targets_regex(LINEAR_TARGETS))
    return lambda enc: apply_qlora(enc, config, blocksize=64, double_quant=double_quant,
                                   compute_dtype=torch.bfloat16, quant_type=quant_type)


def _full(encoder: nn.Module) -> nn.Module:
    for p in encoder.parameters():
        p.requires_grad_(True)
    return encoder


def _frozen(encoder: nn.Module) -> nn.Module:
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def _quantized_frozen(quant_type: str) -> Callable[[nn.Module], nn.Module]:
    """The base rounded to a 4-bit code (blocks of 64) and frozen: what a QLoRA base computes, with no adapter."""
    def adapt(encoder: nn.Module) -> nn.Module:
        regex = targets_regex(LINEAR_TARGETS)
        with torch.no_grad():
            for name, module in encoder.named_modules():
                if isinstance(module, nn.Linear) and re.fullmatch(regex, name):
                    q = quantize_4bit(module.weight.data, quant_code(quant_type), blocksize=64)
                    module.weight.copy_(dequantize_4bit(q).to(module.weight.dtype))
        return _frozen(encoder)
    return adapt


def _adalora(total_step: int) -> Callable[[nn.Module], nn.Module]:
    config = AdaLoRAConfig(init_r=12, target_r=8, alpha=16, target_modules=targets_regex(LINEAR_TARGETS),
                           tinit=total_step // 10, tfinal=total_step // 5, deltaT=10, total_step=total_step)
    return lambda enc: apply_adalora(enc, config)


def _build_arms(steps: int) -> dict[str, Arm]:
    lora_lrs, low_lrs = (1e-3, 3e-3, 1e-2), (3e-4, 1e-3, 3e-3)
    arms = [
        Arm("probe", "linear probe (frozen encoder)", _frozen, (3e-3, 1e-2, 3e-2), kind="probe"),
        Arm("full", "full fine-tuning", _full, (3e-5, 1e-4, 3e-4), kind="full"),
        lora_arm("lora_qv", "LoRA r=8 on W_q, W_v", ("q", "v")),
        lora_arm("lora_all", "LoRA r=8 on all linear", LINEAR_TARGETS),
        lora_arm("rslora_64", "rsLoRA r=64 on all linear", LINEAR_TARGETS, r=64, rslora=True, lrs=low_lrs),
        lora_arm("pissa", "PiSSA r=8 on all linear", LINEAR_TARGETS, init="pissa", lrs=low_lrs),
        lora_arm("dora", "DoRA r=8 on all linear", LINEAR_TARGETS, use_dora=True),
        Arm("adalora", "AdaLoRA r 12 -> 8 on all linear", _adalora(steps), lora_lrs, kind="adalora"),
        Arm("qlora_nf4", "QLoRA: NF4 + DQ base, LoRA r=8", _qlora("nf4"), lora_lrs),
        Arm("qlora_fp4", "QLoRA: FP4 + DQ base, LoRA r=8", _qlora("fp4"), lora_lrs),
        Arm("qlora_int4", "QLoRA: INT4 + DQ base, LoRA r=8", _qlora("int4"), lora_lrs),
        Arm("ia3", "(IA)^3 on k, v, FFN down", lambda enc: apply_ia3(enc, IA3Config(
            target_modules=targets_regex(("k", "v", "down")), feedforward_modules=targets_regex(("down",)))),
            (3e-3, 1e-2, 3e-2)),
        Arm("vera", "VeRA r=256 on W_q, W_v", lambda enc: apply_vera(enc, VeRAConfig(
            r=256, target_modules=targets_regex(("q", "v")))), (3e-3, 1e-2, 3e-2)),
        Arm("loraplus", "LoRA+ (ratio 16), r=8 on all linear",
            lambda enc: apply_lora(enc, LoRAConfig(r=8, alpha=16, target_modules=targets_regex(LINEAR_TARGETS))),
            low_lrs, kind="loraplus", options={"ratio": 16}),
        Arm("bitfit", "BitFit (biases)", lambda enc: apply_bitfit(enc, BitFitConfig()), lora_lrs),
        Arm("prompt", "prompt tuning, 16 virtual tokens",
            lambda enc: apply_prompt_tuning(enc, PromptTuningConfig(num_virtual_tokens=16)), (1e-2, 3e-2, 1e-1)),
        Arm("houlsby", "Houlsby adapters, bottleneck 16", lambda enc: apply_adapters(enc, AdapterConfig(
            kind="houlsby", bottleneck_size=16, target_modules=targets_regex(("o", "down")))), lora_lrs),
    ]
    return {arm.name: arm for arm in arms}


#: The main comparison's arms for the stored run's 100 steps (AdaLoRA's schedule depends on the step count:
#: use :func:`arms_for` for another one).
ARMS = _build_arms(100)


def arms_for(steps: int) -> dict[str, Arm]:
    """The arms with AdaLoRA's budget schedule fitted to ``steps``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 20:
        raise ValueError(f"steps must be an int >= 20, got {steps!r}")
    return _build_arms(steps)


def quantized_base_arm(quant_type: str) -> Arm:
    """The 4-bit-rounded base with only the head trained: "the quantized base alone"."""
    return Arm(f"probe_{quant_type}", f"linear probe on the {quant_type.upper()} base", _quantized_frozen(quant_type),
               (3e-3, 1e-2, 3e-2), kind="probe")


def qlora_arm(quant_type: str, double_quant: bool) -> Arm:
    dq = "+ DQ " if double_quant else ""
    name = f"qlora_{quant_type}{'' if double_quant else '_nodq'}"
    return Arm(name, f"QLoRA: {quant_type.upper()} {dq}base, LoRA r=8",
               _qlora(quant_type, double_quant), (1e-3, 3e-3, 1e-2))
