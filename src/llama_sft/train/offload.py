"""Activation offloading: the tensors autograd saves for backward live in CPU RAM until backward needs them.

For long sequences on a GPU the saved activations, not the weights, set the peak. PyTorch's saved-tensor
hooks let a tensor be moved out when the forward pass saves it and back when the backward pass unpacks
it; `torch.autograd.graph.save_on_cpu` does that for *every* saved tensor, parameters included, which
would copy each weight to the host and back on every step. `ActivationOffload` skips parameters (and
tensors that share a parameter's storage, such as a weight's transpose) and tiny tensors, and pins the
host copies so the transfers overlap compute on the current CUDA stream (the stream's order keeps them
correct: the copy back is queued after the copy out).

With gradient checkpointing (non-reentrant) only each decoder layer's input is saved outside the
recomputed region, so the GPU then holds about one layer's activations; the planner models both
(plan/memory.py, `activation_offloading`). On a CPU it still copies (so tests can prove the gradients
are unchanged), which buys nothing: it is meant for GPUs.
"""

from __future__ import annotations

import torch

MIN_BYTES = 1024  # scalars, rsqrt vectors and index tensors stay where they are: the copy would cost more


class ActivationOffload(torch.autograd.graph.saved_tensors_hooks):
    """Context manager: saved tensors of the forward pass inside it are kept on the CPU."""

    def __init__(self, model: torch.nn.Module | None = None, min_bytes: int = MIN_BYTES):
        self.min_bytes = min_bytes
        # storages of the weights: a frozen weight's transposed view is saved as a plain tensor
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()} if model else set()
        self.pin = torch.cuda.is_available()
        self.offloaded_bytes = 0
        super().__init__(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor):
        if (
            isinstance(tensor, torch.nn.Parameter)
            or tensor.layout is not torch.strided
            or tensor.untyped_storage().nbytes() < self.min_bytes
            or tensor.untyped_storage().data_ptr() in self.weights
        ):
            return tensor  # a parameter (or a view of one) or too small to be worth a copy
        host = torch.empty(
            tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=self.pin, device="cpu"
        )
        host.copy_(tensor, non_blocking=self.pin)
        self.offloaded_bytes += host.nbytes
        return (tensor.device, host)

    @staticmethod
    def _unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, host = packed
        return host.to(device, non_blocking=host.is_pinned())
