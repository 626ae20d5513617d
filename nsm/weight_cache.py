"""The inference cache of the NSM layers: their effective weights and -1 border maps are functions of the
parameters alone, so Monte Carlo rounds and streams compute them once (``WeightCache``, ``memo``)."""

from __future__ import annotations

import torch
from torch import nn


class WeightCache:
    """Reuse the NSM layers' effective weights and -1 border maps across forward passes of ``model`` (the
    modules whose class sets ``uses_weight_cache = True``; they compute such values through ``memo``).

    Inside ``with cache:`` and with autograd off, each NSM layer computes them once and reuses them until a
    parameter changes through a tracked operation (in-place update such as an optimizer step,
    ``load_state_dict``, ``.to()``: the parameters' version counter, storage, dtype or device). Outside
    every cache they are recomputed on each forward pass, so nothing can go stale. Writes through ``.data``
    and in-place writes to inference-mode tensors are not tracked: leave the cache before such an edit and
    use a new one after it.

    One cache may be entered many times and keeps its entries in between (``StreamingClassifier`` holds one
    for its lifetime; ``mc_predict`` uses a fresh one per call). While a unit is inside one cache, entering
    another leaves it on the outer one.
    """

    def __init__(self, model: nn.Module):
        self._stores = {unit: {} for unit in model.modules() if getattr(unit, "uses_weight_cache", False)}
        self._outer = []

    def __enter__(self) -> WeightCache:
        self._outer.append({unit: unit.__dict__.get("_weight_cache") for unit in self._stores})
        for unit, store in self._stores.items():
            if unit.__dict__.get("_weight_cache") is None:
                unit.__dict__["_weight_cache"] = store
        return self

    def __exit__(self, *exc) -> None:
        for unit, outer in self._outer.pop().items():
            unit.__dict__["_weight_cache"] = outer


def memo(owner: nn.Module, slot: str, tensors: list[torch.Tensor], extra, compute):
    """``compute()``, kept in ``owner``'s active :class:`WeightCache` under ``slot`` while autograd is off.

    The entry is reused while ``tensors`` are the same objects with the same version counters (inference-mode
    tensors keep none), storage, dtype and device, and ``extra`` is equal. Without an active cache or under
    autograd it is always recomputed.
    """
    store = owner.__dict__.get("_weight_cache")
    if store is None or torch.is_grad_enabled():
        return compute()
    state = tuple((None if t.is_inference() else t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)
    entry = store.get(slot)
    if entry is None or entry[1] != state or entry[2] != extra or any(a is not b for a, b in zip(entry[0], tensors)):
        entry = (tuple(tensors), state, extra, compute())
        store[slot] = entry
    return entry[3]
