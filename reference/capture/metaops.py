"""Ops on the meta device, without re-deriving what is already known.

The capture runs a decoder's ops on the meta device, where an op computes no values, only its outputs'
metadata, often through PyTorch's Python reference kernels (tenths of a millisecond each). Two shortcuts, both
exact:

- A functional op (no input written, no output aliasing an input) makes fresh outputs whose shapes, strides and
  dtypes are a function of its inputs' shapes, strides and dtypes and of its other arguments: `MetaOps` computes
  them once per distinct call and makes the outputs of later calls with `torch.empty_strided`.
- `attention_output` is scaled_dot_product_attention's output laid out as the fused cpu and cuda kernels lay it
  out, without running the dozen ops of meta's math decomposition (the capture records attention as one op).

tests/test_tracing.py checks that traces taken with and without them are the same.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


def attention_output(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The output of scaled_dot_product_attention(q, k, v, ...) on meta: [..., H, Lq, Ev] (H = q's heads, also
    under grouped-query attention), its memory [..., Lq, H, Ev] as the fused kernels return it, so that merging
    the heads afterwards is a view on every device."""
    batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3]) if q.dim() > 3 else ()
    shape = (*batch, q.shape[-2], q.shape[-3], v.shape[-1])
    return torch.empty(shape, dtype=q.dtype, device=q.device).transpose(-3, -2)


def _functional(func: Any) -> bool:
    schema = func._schema
    return (not func.is_view and all(a.alias_info is None for a in schema.arguments)
            and all(r.alias_info is None for r in schema.returns))


def _key(value: Any) -> Any:
    """A hashable description of an argument: a tensor by its metadata, a list or tuple by its items, anything
    else by its type and value (1 and 1.0 promote differently); None if it has no such description."""
    if isinstance(value, torch.Tensor):
        return None if value.device.type != "meta" else (value.dtype, tuple(value.shape), value.stride())
    if isinstance(value, list | tuple):
        items = tuple(map(_key, value))
        return None if None in items else (type(value), items)
    try:
        hash(value)
    except TypeError:
        return None
    return type(value), value


class MetaOps:
    """Runs ops on the meta device, functional ones from the metadata of an earlier call alike (module
    docstring)."""

    def __init__(self) -> None:
        self._functional: dict[Any, bool] = {}
        self._outputs: dict[tuple, tuple[list[tuple[torch.Size, tuple[int, ...], torch.dtype]], Any]] = {}

    def __call__(self, func: Any, args: tuple, kwargs: dict) -> Any:
        functional = self._functional.get(func)
        if functional is None:
            functional = self._functional[func] = _functional(func)
        key = (func, _key(args), _key(tuple(sorted(kwargs.items())))) if functional else None
        if key is None or None in key:
            return func(*args, **kwargs)
        known = self._outputs.get(key)
        if known is None:
            out = func(*args, **kwargs)
            leaves, spec = tree_flatten(out)
            if all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in leaves):
                self._outputs[key] = ([(t.shape, t.stride(), t.dtype) for t in leaves], spec)
            return out
        metas, spec = known
        return tree_unflatten([torch.empty_strided(shape, stride, dtype=dtype, device="meta")
                               for shape, stride, dtype in metas], spec)
