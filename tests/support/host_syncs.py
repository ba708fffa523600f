"""Count the ops that would block the host on a GPU, while the code runs on the CPU.

On CUDA, `nonzero`, boolean-mask indexing, `item()` / `bool(tensor)`, `tolist()` and copies to the host
each wait for the device to finish everything queued before them: a step full of them is sync-bound.
On the CPU nothing waits, so the counter reads the ops themselves: a `TorchFunctionMode` catches the
Python-level calls (`.cpu()`, `.tolist()`, `.item()`, `bool(t)`, ...), a `TorchDispatchMode` the aten ops
that need a result's size or value on the host (`nonzero`, boolean `index` / `index_put_`, ...).

A copy's result lives on the host: it is marked, and so is everything computed from host tensors
alone, so that unpacking a copied payload counts nothing (on a GPU it is plain host work).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_HOST = "_host_syncs_on_host"

_TRANSFERS = {"cpu", "tolist", "item", "numpy", "__bool__", "__int__", "__float__", "__index__"}
"""Tensor methods that bring a device tensor's values to the host."""

_SIZE_FROM_VALUES = {
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.unique_dim.default,
    torch.ops.aten._unique2.default,
    torch.ops.aten.unique_consecutive.default,
    torch.ops.aten.repeat_interleave.Tensor,
}
"""Aten ops whose output shape or value the host must wait for."""

_BOOL_INDEXED = {
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
}
"""Aten ops that run `nonzero` on a boolean index."""


def _on_host(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and getattr(value, _HOST, False)


def _mark_host(value: Any) -> None:
    for leaf in tree_flatten(value)[0]:
        if isinstance(leaf, torch.Tensor):
            setattr(leaf, _HOST, True)


def _to_cpu(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether `.to(...)` moves a device tensor to the host. (A `.to(x.device)` inside a model is a no-op
    on the CPU and stays on the GPU there: only `.cpu()` counts as a copy on the CPU.)"""
    targets = [*args[1:], kwargs.get("device")]
    moves = any(str(t) == "cpu" for t in targets if isinstance(t, (str, torch.device)))
    return moves and args[0].device.type != "cpu"


def _where() -> str:
    """The innermost frame in the project that made the call (for the report)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/app/" in frame.filename or "/model_training/" in frame.filename:
            return f"{frame.filename.rsplit('/app/', 1)[-1]}:{frame.lineno} {frame.name}"
    return "?"


@dataclass
class HostSyncs:
    """What was counted: one entry (op, where) per host-blocking op."""

    events: list[tuple[str, str]] = field(default_factory=list)
    _inside: int = 0  # > 0 while a counted Python-level call runs its aten ops

    @property
    def count(self) -> int:
        return len(self.events)

    def record(self, op: str) -> None:
        self.events.append((op, _where()))


class _Functions(TorchFunctionMode):
    def __init__(self, syncs: HostSyncs) -> None:
        super().__init__()
        self.syncs = syncs

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        counted = bool(args) and isinstance(args[0], torch.Tensor) and not _on_host(args[0])
        counted &= name in _TRANSFERS or (name == "to" and _to_cpu(args, kwargs))
        if not counted:
            return func(*args, **kwargs)
        self.syncs.record(name)
        self.syncs._inside += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self.syncs._inside -= 1
        _mark_host(out)
        return out


class _Aten(TorchDispatchMode):
    def __init__(self, syncs: HostSyncs) -> None:
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        host = bool(tensors) and all(_on_host(t) for t in tensors)
        if not host and not self.syncs._inside and self._blocks(func, args):
            self.syncs.record(str(func.overloadpacket.__name__))
        out = func(*args, **kwargs)
        if host:
            _mark_host(out)
        return out

    @staticmethod
    def _blocks(func: Any, args: tuple[Any, ...]) -> bool:
        if func in _SIZE_FROM_VALUES:
            return True
        if func in _BOOL_INDEXED:
            indices = args[1] if len(args) > 1 else []
            return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
        return False


class count_host_syncs:
    """Context manager: `with count_host_syncs() as syncs: ...; syncs.count`."""

    def __enter__(self) -> HostSyncs:
        self.syncs = HostSyncs()
        self._modes = [_Functions(self.syncs), _Aten(self.syncs)]
        for mode in self._modes:
            mode.__enter__()
        return self.syncs

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
