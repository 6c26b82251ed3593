"""Count the operations that make the host wait for an accelerator, on a CPU-only machine.

On CUDA these calls block until the device has finished its queue (what ``torch.cuda.set_sync_debug_mode`` warns
about): reading a value (``.item()``, ``bool()``, ``int()``), anything whose output size depends on the data
(``nonzero``, boolean-mask indexing, ``unique``, ``repeat_interleave`` without ``output_size``, torchvision's NMS
kernel), ``torch.equal``, and copies to the host (``.cpu()``, ``.tolist()``, ``.numpy()``). A
`TorchDispatchMode` sees every aten op with its arguments, so it counts them on CPU tensors as well, where they
cost nothing; the host copies never reach the dispatcher on CPU, so `count_host_syncs` wraps those methods too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Under torch.inference_mode composite ops reach the mode undecomposed (aten::item, aten::nonzero_numpy).
_DATA_DEPENDENT = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::nonzero_numpy",
                   "aten::argwhere", "aten::masked_select", "aten::equal",
                   "aten::is_nonzero", "aten::unique_consecutive", "aten::_unique", "aten::_unique2",
                   "aten::unique_dim", "aten::bincount", "aten::histc", "torchvision::nms"}
_INDEXING = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}
_HOST_COPIES = ("cpu", "tolist", "numpy")


class _SyncCounter(TorchDispatchMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in _DATA_DEPENDENT:
            self.counts[name] += 1
        elif name in _INDEXING and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                       for i in (args[1] if len(args) > 1 else ()) if i is not None):
            self.counts[f"{name} (boolean mask)"] += 1
        elif name == "aten::repeat_interleave" and kwargs.get("output_size") is None and len(args) == 1:
            self.counts[f"{name} (no output_size)"] += 1
        return func(*args, **kwargs)


@contextmanager
def count_host_syncs() -> Iterator[Counter]:
    """Within the block, count would-be host syncs by kind into the yielded Counter."""
    counts: Counter = Counter()
    with pytest.MonkeyPatch.context() as patch:
        for method in _HOST_COPIES:
            original = getattr(torch.Tensor, method)

            def wrapper(self, *args, _original=original, _name=f"Tensor.{method}", **kwargs):
                counts[_name] += 1
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, method, wrapper)
        with _SyncCounter(counts):
            yield counts
