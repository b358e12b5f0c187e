"""Routing requests to adapters by task, tenant or API key (notebook 12, section 7).

A served batch needs one adapter id per row. Where that id comes from is a serving decision, not a model one:
the same prompt can mean different things for different customers (in notebook 12, ``abc>`` is answered with a
shift by one by the base model and by three with the Caesar adapter), so requests carry a key (task name, tenant,
API key) and a :class:`Router` maps keys to adapters in the bank::

    router = Router(bank, {"tenant-a": "caesar", "tenant-b": "copy", "free-tier": None})   # None = base model
    ids = router.adapter_ids(["tenant-a", "free-tier", "tenant-b"])                      # tensor([0, -1, 1])
    order = router.grouped_order(keys)   # requests of one adapter together: one SGMV segment / merged model each

Names are looked up in the bank at call time, so adapters can be added and removed while the router runs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch

from lorakit.serving.bank import AdapterBank

__all__ = ["Router"]


class Router:
    """``{key: adapter name or None (base model)}`` over a bank; see the module docstring.

    ``strict=True``: a key without a route is a ValueError naming it; ``strict=False``: it gets ``fallback``
    (an adapter name, or None for the base model).
    """

    def __init__(self, bank: AdapterBank, routes: Mapping[Hashable, str | None], fallback: str | None = None,
                 strict: bool = True) -> None:
        if not isinstance(bank, AdapterBank):
            raise TypeError(f"bank must be a lorakit.serving.AdapterBank, got {type(bank).__name__}")
        if not isinstance(routes, Mapping):
            raise TypeError(f"routes must be a mapping key -> adapter name (or None), got {type(routes).__name__}")
        bad = {k: v for k, v in routes.items() if v is not None and not isinstance(v, str)}
        if bad:
            raise TypeError(f"routes must map keys to adapter names (str) or None, got {bad}")
        if fallback is not None and not isinstance(fallback, str):
            raise TypeError(f"fallback must be an adapter name or None, got {fallback!r}")
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
        self.bank, self.routes, self.fallback, self.strict = bank, dict(routes), fallback, strict

    def adapter_name(self, key: Hashable) -> str | None:
        """The adapter a request with ``key`` goes to (None: the base model)."""
        if key in self.routes:
            return self.routes[key]
        if self.strict:
            raise ValueError(f"no route for key {key!r} (routes: {sorted(map(str, self.routes))}); add one, or build "
                             "the Router with strict=False and a fallback")
        return self.fallback

    def adapter_id(self, key: Hashable) -> int:
        name = self.adapter_name(key)
        if name is None:
            return -1
        if name not in self.bank:
            raise ValueError(f"key {key!r} routes to adapter {name!r}, which is not in the bank (resident: "
                             f"{sorted(self.bank.adapters)})")
        return self.bank.id_of(name)

    def adapter_ids(self, keys: Sequence[Hashable]) -> torch.Tensor:
        """One adapter id per request (``-1``: base model), as the ``adapter_ids`` of a served forward."""
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
            raise TypeError(f"keys must be a sequence with one key per request, got {type(keys).__name__}")
        return torch.tensor([self.adapter_id(k) for k in keys], dtype=torch.int64)

    def grouped_order(self, keys: Sequence[Hashable]) -> list[int]:
        """A stable order of the requests that puts requests for the same adapter next to each other."""
        ids = self.adapter_ids(keys).tolist()
        return sorted(range(len(ids)), key=lambda i: ids[i])
