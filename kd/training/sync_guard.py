"""The ATen ops a training step dispatches, and those of them that on a GPU would wait for it or copy from the host.

On a GPU a step that reads a value to the host (`.item()`, `.tolist()`, `if tensor:`), waits for a data-dependent
shape (`nonzero`, boolean-mask indexing, `torch.unique`) or copies host data to the device (`torch.tensor(list,
device=...)`) stalls the CPU until the GPU has caught up, and cannot be captured as a CUDA graph. A CPU stalls
on none of them, but the same code dispatches the same ops there, where a TorchDispatchMode sees them: so the
CPU tests keep the step free of them without a GPU (tests/test_sync_guard.py). The count of dispatched ops is
also the CPU's proxy for a GPU step's kernel launches (benchmarks/ops.py counts with this same record).

On a CPU every tensor is a host tensor, so a copy from the host is recognised by where the tensor comes from:
one made from Python data inside the step (`torch.tensor`, `torch.as_tensor`, `torch.from_numpy`). A Python
number passed to an op travels as a kernel argument, no copy, and is allowed.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import traceback
from collections import Counter
from typing import Iterable, Iterator, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import kd

aten = torch.ops.aten
KD_DIR = os.path.dirname(os.path.abspath(kd.__file__)) + os.sep
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep  # not torchvision
THIS_FILE = os.path.abspath(__file__)

# Ops that wait for the device whatever their arguments: what each does, for the error.
SYNCING_OPS = {
    aten._local_scalar_dense: "reads a value to the host (.item(), int(), float(), bool(), `if tensor:`)",
    aten.nonzero: "waits for a data-dependent shape (nonzero)",
    aten.masked_select: "waits for a data-dependent shape (masked_select)",
    aten._unique: "waits for a data-dependent shape (torch.unique)",
    aten._unique2: "waits for a data-dependent shape (torch.unique)",
    aten.unique_dim: "waits for a data-dependent shape (torch.unique)",
    aten.unique_consecutive: "waits for a data-dependent shape (torch.unique_consecutive)",
    aten.equal: "reads a bool to the host (torch.equal)",
}
INDEXING_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
LIFTS = {aten.lift_fresh, aten.lift_fresh_copy}  # a tensor made from Python data or a NumPy array enters torch
COPIES = {aten._to_copy, aten.copy_}
HOST_READS = {torch.Tensor.tolist: "reads the tensor to the host (.tolist())",
              torch.Tensor.numpy: "reads the tensor to the host (.numpy())"}
FROM_PYTHON = {torch.tensor, torch.as_tensor}
_END = object()  # a watched loop's batches are over


class HostSyncError(RuntimeError):
    """The step did something that on a GPU waits for the device or copies from the host."""


def host_sync(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Optional[str]:
    """Why the ATen op `func` called with `args` would sync with the host on a GPU; None if it would not."""
    packet = func.overloadpacket
    if packet in SYNCING_OPS:
        return SYNCING_OPS[packet]
    if packet in INDEXING_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "indexes with a boolean mask (a data-dependent shape)"
    if packet in LIFTS and args[0].ndim > 0:
        return "makes a tensor from host data (torch.tensor / as_tensor / from_numpy of a list or array)"
    if packet in COPIES:
        src, dst = (args[0].device, kwargs.get("device") or args[0].device) if packet is aten._to_copy \
            else (args[1].device, args[0].device)
        if (torch.device(src).type == "cpu") != (torch.device(dst).type == "cpu"):
            return f"copies between the host and the device ({src} -> {dst})"
    return None


def where() -> str:
    """The innermost Python line outside torch that runs the current op, and kd's line that led there if another."""
    frames = [f for f in traceback.extract_stack()
              if not os.path.abspath(f.filename).startswith(TORCH_DIR) and os.path.abspath(f.filename) != THIS_FILE]
    if not frames:
        return "torch's own code"
    inner = frames[-1]
    text = f"{_short(inner.filename)}:{inner.lineno} in {inner.name}: {inner.line}"
    ours = next((f for f in reversed(frames) if os.path.abspath(f.filename).startswith(KD_DIR)), None)
    if ours is not None and ours is not inner:
        text += f" (from {_short(ours.filename)}:{ours.lineno} in {ours.name})"
    return text


def _short(path: str) -> str:
    path = os.path.abspath(path)
    root = os.path.dirname(KD_DIR.rstrip(os.sep)) + os.sep
    return os.path.relpath(path, root) if path.startswith(root) else path.rsplit("site-packages/", 1)[-1]


class OpRecord:
    """The ATen ops dispatched while it is entered (any number of times), and the host syncs among them.

    `counts` holds each op's count (`aten::add.Tensor`: n); `syncs` each host sync, named by its op, why it
    syncs and the line that ran it, with how often it happened; `steps` the training steps recorded by `watch`.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.steps = 0
        self._entered: list[contextlib.ExitStack] = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def note(self, op: str, why: str) -> None:
        self.syncs[f"{op} {why}, at {where()}"] += 1

    def __enter__(self) -> OpRecord:
        stack = contextlib.ExitStack()
        stack.enter_context(_HostCalls(self))  # outermost: it sees the Python calls before they dispatch
        stack.enter_context(_Dispatches(self))
        self._entered.append(stack)
        return self

    def __exit__(self, *exc) -> None:
        self._entered.pop().close()

    @contextlib.contextmanager
    def watch(self, batches: Iterable, skip: int = 0) -> Iterator[Iterator]:
        """`batches` for a training loop, each step from the `skip`+1-th on recorded: the making of its batch
        (sampling, augmentation) and the loop's body on it until it asks for the next one. What the loop does
        before its first batch and after its last (an epoch's reads of its metrics) stays outside."""
        steps = self._steps(iter(batches), skip)
        try:
            yield steps
        finally:
            steps.close()  # a loop that raised leaves no mode entered

    def _steps(self, batches: Iterator, skip: int) -> Iterator:
        for step in itertools.count():
            counted = step >= skip
            with self if counted else contextlib.nullcontext():
                batch = next(batches, _END)
                if batch is _END:
                    return
                if counted:
                    self.steps += 1
                yield batch

    def check(self) -> None:
        """Raise HostSyncError naming every host sync recorded, if there was one."""
        if self.syncs:
            lines = "\n".join(f"  {n}x {sync}" for sync, n in self.syncs.most_common())
            raise HostSyncError(f"{len(self.syncs)} kind(s) of host sync, which on a GPU would stall the step "
                                f"and break CUDA graph capture:\n{lines}")


@contextlib.contextmanager
def no_host_sync() -> Iterator[OpRecord]:
    """Run the block, recording its ops; raise HostSyncError at its end if any would sync with the host."""
    with OpRecord() as record:
        yield record
    record.check()


class _Dispatches(TorchDispatchMode):
    def __init__(self, record: OpRecord) -> None:
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.record.counts[func.name()] += 1
        why = host_sync(func, args, kwargs)
        if why is not None:
            self.record.note(func.name(), why)
        return func(*args, **kwargs)


class _HostCalls(TorchFunctionMode):
    """What the dispatcher does not show: `.tolist()` and `.numpy()` read a CPU tensor without an op, and a
    tensor made from one Python number dispatches as a Python number wrapped by an op would."""

    def __init__(self, record: OpRecord) -> None:
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS:
            self.record.note(f"Tensor.{func.__name__}", HOST_READS[func])
        elif func in FROM_PYTHON and args and isinstance(args[0], (bool, int, float, complex)):
            self.record.note(f"torch.{func.__name__}", "makes a tensor from a Python number (a host-to-device "
                             "copy where it is put on a GPU; use new_full, or pass the number to the op)")
        return func(*args, **kwargs)
