"""One training step's work split across processes (`accelerate launch`: gloo on CPUs, NCCL on GPUs).

Every process draws the whole batch from the same generator, so it holds the very examples and negatives
one process would draw. A model then computes its expensive part (LLM-SRec: the LLM passes) for a
contiguous share of the rows and gathers the shares (`Shard.gather`); the cheap rest (logits, in-batch
negatives, uniformity) runs on the gathered tensors, identically on every process. A gathered tensor
carries gradient only through the process's own share, so the sum of the parameters' gradients over
processes (`Shard.sum_grads`) is the one-process gradient of the whole batch's loss, up to the order of
float sums. Data parallelism that splits the batch's *loss* instead (each process its own slice's mean)
would change the objective whenever examples interact: in-batch negatives, the uniformity term.

Validation splits the same way (`Shard.share` of whole batches, then `Shard.sum_`), so every process
gets the same figure and takes the same early-stopping decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` processes (rank 0..world-1); collectives run on `device`
    (NCCL moves only CUDA tensors, gloo CPU ones). `Shard()` is the one-process case: no collective."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @classmethod
    def of(cls, accelerator) -> Shard:
        """The shard of an `accelerate.Accelerator` (its process group must be up)."""
        return cls(accelerator.process_index, accelerator.num_processes, accelerator.device)

    def sizes(self, n: int) -> list[int]:
        """Each process's count of `n` contiguous rows: the first `n % world` take one more."""
        return [n // self.world + (r < n % self.world) for r in range(self.world)]

    def part(self, n: int) -> slice:
        """This process's contiguous rows of `n` (empty when n < world and rank >= n)."""
        sizes = self.sizes(n)
        lo = sum(sizes[: self.rank])
        return slice(lo, lo + sizes[self.rank])

    def share(self, n: int) -> range:
        """This process's chunks of `n` (every world-th, from its rank): for work in chunks of uneven cost
        sorted by it, which contiguous rows would pile on the last process."""
        return range(self.rank, n, self.world)

    def gather(self, local: Tensor, n: int) -> Tensor:
        """[n, ...]: every process's `part(n)` rows, in order; `local` [part(n) rows, ...] is this process's
        and stays in the autograd graph, the others arrive without gradient."""
        if self.world == 1:
            return local
        import torch.distributed as dist

        sizes = self.sizes(n)
        if local.shape[0] != sizes[self.rank]:
            raise ValueError(f"rank {self.rank} holds {local.shape[0]} rows of {n}, its part is {sizes[self.rank]}")
        padded = local.detach().to(self.device or local.device).new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local.detach()
        received = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(received, padded)
        parts = [r[:s].to(local.device) for r, s in zip(received, sizes, strict=True)]
        parts[self.rank] = local
        return torch.cat(parts)

    def sum_(self, x: Tensor) -> Tensor:
        """`x` replaced by its sum over processes (returned; a no-op for one process). Adding zeros is
        exact, so tensors each process fills at its own rows come back whole, bit for bit."""
        if self.world == 1:
            return x
        import torch.distributed as dist

        buf = x.to(self.device or x.device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        if buf is not x:
            x.copy_(buf)
        return x

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Every parameter's gradient replaced by its sum over processes, in one collective. A parameter no
        process reached keeps `grad = None`, as one process would leave it (Adam then skips it)."""
        if self.world == 1 or not params:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                         + [torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)])
        self.sum_(flat)
        offset = 0
        for i, p in enumerate(params):
            n = p.numel()
            reached = flat[flat.numel() - len(params) + i] > 0
            p.grad = flat[offset: offset + n].view_as(p).clone() if reached else None
            offset += n
