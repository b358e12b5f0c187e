"""``MultiLoRAModel``: one base model serving a batch in which every row has its own adapter (notebook 12, eq. 2).

``MultiLoRAModel(model, bank)`` replaces each layer the bank serves by a :class:`BatchedLoRALinear`, in place (as
``apply_lora`` does, and atomically), and its forward takes one adapter id per batch row::

    served = MultiLoRAModel(model, bank, kernel="bgmv")          # or "sgmv" (prefill), "masked" (the naive loop)
    logits = served(input_ids, adapter_ids=[caesar, -1, copy])   # row 1 runs the base model alone

Every served layer computes the shared base product once for the whole batch and adds, per row, that row's
adapter's ``(x A^T)(s B)^T`` through the chosen kernel (:mod:`lorakit.serving.kernels`); the batch's metadata
is prepared once per forward (:mod:`lorakit.serving.plan`). ``backend`` picks the kernels' implementation
(``"torch"``; a registered ``"triton"`` later). No dropout is applied: this is inference.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.layers import LinearAdapterLayer, adapted_owner, adapter_layers
from lorakit.peft.targets import check_model, set_submodule
from lorakit.serving.bank import AdapterBank
from lorakit.serving.kernels import check_backend, check_kernel
from lorakit.serving.plan import BatchPlan

__all__ = ["BatchedLoRALinear", "MultiLoRAModel"]


class _BatchContext:
    """What the served layers of one model share: the current batch's plan and the kernel choice."""

    def __init__(self, kernel: str, backend: str) -> None:
        self.plan: BatchPlan | None = None
        self.kernel, self.backend = kernel, backend


class BatchedLoRALinear(LinearAdapterLayer):
    """A frozen ``nn.Linear`` plus the bank's adapters, one per batch row (made by :class:`MultiLoRAModel`)."""

    adapter_kind = "multi-LoRA serving"

    def __init__(self, base: nn.Linear, layer_name: str, bank: AdapterBank, context: _BatchContext) -> None:
        super().__init__()
        self.base = base
        self.layer_name = layer_name
        self.bank = bank
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.context.plan
        if plan is None:
            raise RuntimeError(f"served layer {self.layer_name!r} was called outside MultiLoRAModel.forward: call the "
                               "MultiLoRAModel with adapter_ids=[...] (-1 for base-only rows)")
        autocast = torch.is_autocast_enabled(x.device.type)
        if not autocast and x.dtype != self.base.weight.dtype:
            raise TypeError(f"layer {self.layer_name!r} got an input of dtype {x.dtype}, but its weight is "
                            f"{self.base.weight.dtype} (cast the model or use torch.autocast)")
        result = self.base(x)
        if not plan.present:  # only base-only rows in this batch
            return result
        if x.dim() < 2 or x.shape[0] != plan.batch_size:
            raise ValueError(f"layer {self.layer_name!r} got an input of shape {tuple(x.shape)} whose leading "
                             f"dimension is not the batch size {plan.batch_size} that adapter_ids describes")
        if x.device != self.bank.device:
            raise ValueError(f"layer {self.layer_name!r} got an input on {x.device}, but the bank is on "
                             f"{self.bank.device} (build the bank on the model's device)")
        rows = x.reshape(-1, self.in_features)
        if not autocast and rows.dtype != self.bank.dtype:
            rows = rows.to(self.bank.dtype)
        tokens_per_row = rows.shape[0] // plan.batch_size
        delta = self.bank.delta(self.layer_name, rows, plan.for_tokens(tokens_per_row), self.context.kernel,
                                self.context.backend)
        return result + delta.reshape(result.shape).to(result.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, layer={self.layer_name!r}"


def _batch_size(args: tuple, kwargs: dict) -> int:
    for value in (*args, kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return value.shape[0]
    raise ValueError("cannot tell the batch size: pass the model's input (e.g. input_ids) as a tensor")


class _Bound(nn.Module):
    def __init__(self, served: MultiLoRAModel, adapter_ids: object) -> None:
        super().__init__()
        self.served, self.adapter_ids = served, adapter_ids

    def forward(self, *args: object, **kwargs: object) -> object:
        return self.served(*args, adapter_ids=self.adapter_ids, **kwargs)


class MultiLoRAModel(nn.Module):
    """Serve ``bank``'s adapters on ``model``: ``forward(*inputs, adapter_ids=...)``; see the module docstring.

    Args:
        model: the base model, adapted in place (its served ``nn.Linear`` layers become :class:`BatchedLoRALinear`;
            :meth:`unload` puts them back). bank: an :class:`~lorakit.serving.bank.AdapterBank` built for this base
            (same layer names and shapes, same device; its dtype the weights' or float32).
        kernel: ``"bgmv"`` (gather + bmm; decode), ``"sgmv"`` (segmented; prefill) or ``"masked"`` (the naive loop).
        backend: the kernels' implementation (``"torch"``, or one added by ``kernels.register_backend``).
        sort: let SGMV reorder rows so that each adapter's rows are contiguous (one segment per adapter).
    """

    def __init__(self, model: nn.Module, bank: AdapterBank, kernel: str = "bgmv", backend: str = "torch",
                 sort: bool = True) -> None:
        super().__init__()
        check_model(model)
        if not isinstance(bank, AdapterBank):
            raise TypeError(f"bank must be a lorakit.serving.AdapterBank, got {type(bank).__name__}")
        if not isinstance(sort, bool):
            raise TypeError(f"sort must be a bool, got {type(sort).__name__}")
        context = _BatchContext(check_kernel(kernel), check_backend(backend))
        owners = adapter_layers(model)
        for name, (d_in, d_out) in bank.shapes.items():
            owner = adapted_owner(name, owners)
            if owner is not None:
                raise ValueError(f"layer {name!r} already carries a {owners[owner].adapter_kind} adapter ({owner!r}); "
                                 "serve an un-adapted base (merge_and_unload or unload first)")
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"bank serves layer {name!r}, which model does not have: the bank was built for "
                                 "another base") from None
            if not isinstance(module, nn.Linear) or (module.in_features, module.out_features) != (d_in, d_out):
                raise ValueError(f"bank serves {name!r} as Linear({d_in}, {d_out}), but model has {module!r} there: "
                                 "the bank was built for another base")
            if module.weight.device != bank.device:
                raise ValueError(f"bank is on {bank.device} but layer {name!r} is on {module.weight.device}")
            if bank.dtype not in (module.weight.dtype, torch.float32):
                raise TypeError(f"bank has dtype {bank.dtype} but layer {name!r} holds {module.weight.dtype} weights: "
                                "build the bank in the weights' dtype (or float32)")
        with unchanged_on_error(model):
            for name in bank.shapes:
                set_submodule(model, name, BatchedLoRALinear(model.get_submodule(name), name, bank, context))
        self.model = model
        self.bank = bank
        self.sort = sort
        self._context = context

    @property
    def kernel(self) -> str:
        return self._context.kernel

    @kernel.setter
    def kernel(self, value: str) -> None:
        self._context.kernel = check_kernel(value)

    @property
    def backend(self) -> str:
        return self._context.backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._context.backend = check_backend(value)

    def forward(self, *args: object, adapter_ids: object, **kwargs: object) -> object:
        """Run the base model on the batch, each row with adapter ``adapter_ids[row]`` (``-1``: base only)."""
        plan = self.bank.plan(adapter_ids, sort=self.sort)
        rows = _batch_size(args, kwargs)
        if plan.batch_size != rows:
            raise ValueError(f"adapter_ids has {plan.batch_size} entries but the batch has {rows} rows "
                             "(one id per row)")
        self._context.plan = plan
        try:
            return self.model(*args, **kwargs)
        finally:
            self._context.plan = None

    def bind(self, adapter_ids: object) -> nn.Module:
        """A module whose ``forward(*inputs)`` is this model's with ``adapter_ids`` fixed (checked now and per call).

        For code that calls ``model(input_ids)`` with no room for extra arguments, e.g. ``lorakit.data.evaluate``.
        """
        self.bank.plan(adapter_ids)  # validate now: a bad id is an error here, not at the first call
        return _Bound(self, adapter_ids)

    def unload(self) -> nn.Module:
        """Put the plain ``nn.Linear`` layers back and return the base model (the bank is left as it is)."""
        with unchanged_on_error(self.model):
            for name in self.bank.shapes:
                layer = self.model.get_submodule(name)
                if isinstance(layer, BatchedLoRALinear):
                    set_submodule(self.model, name, layer.base)
        return self.model
