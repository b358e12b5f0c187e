"""What every lorakit adapter layer has in common, and the rule that adapters never stack.

Every layer lorakit puts into a model (``LoRALinear``, ``DoRALinear``, ``QLoRALinear``, AdaLoRA's
``SVDLinear``, and the family's layers) subclasses :class:`AdapterLayer`: a module that wraps a frozen
``base`` module and adds trainable parameters around it. That one base class lets the model-level API
answer two questions for any adapter kind:

* *Is this layer adapted already?* A second adapter on an adapted layer is refused (naming the layer),
  whatever the kinds: LoRA inside AdaLoRA, QLoRA on LoRA, IA3 on DoRA. PEFT would nest them and train
  both; in a course that teaches one method at a time that is always a mistake, so lorakit says so.
* *Which layers carry adapters?* :func:`adapter_layers` lists them, for any kind.
"""

from __future__ import annotations

from torch import nn

__all__ = ["AdapterLayer", "LinearAdapterLayer", "adapter_layers", "adapted_owner"]


class AdapterLayer(nn.Module):
    """Base class of lorakit's adapter layers: a frozen ``base`` module plus trainable adapter parameters.

    Subclasses set ``self.base`` in ``__init__`` and name their kind in :attr:`adapter_kind` (used in
    error messages).
    """

    adapter_kind: str = "adapter"


class LinearAdapterLayer(AdapterLayer):
    """An adapter layer around a linear ``base``: it reports the base's ``in_features`` and ``out_features``."""

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """``{module name: layer}`` for every lorakit adapter layer in ``model`` (outermost only)."""
    found: dict[str, AdapterLayer] = {}
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer) and not any(name.startswith(f"{n}.") for n in found):
            found[name] = module
    return found


def adapted_owner(name: str, owners: dict[str, AdapterLayer]) -> str | None:
    """The name of the adapter layer that is, or contains, module ``name`` (None when there is none)."""
    for owner in owners:
        if name == owner or name.startswith(f"{owner}.") or owner == "":
            return owner
    return None
