"""Mini-batches of cached graphs for training and inference."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch_geometric.data import Batch

from tlmat.data.dataset import GraphDataset
from tlmat.data.memory import Releaser


class GraphLoader:
    """Iterates PyG batches of ``dataset[indices]``; with ``shuffle`` the order is drawn from
    (``seed``, epoch) — the trainer sets the epoch, so a resumed run sees the same order as
    an uninterrupted one.

    With ``replicas`` > 1 (data-parallel training), the process of rank r of the
    ``torch.distributed`` group takes every ``replicas``-th structure of that order,
    starting at r: together the processes' k-th batches are the one-process loader's k-th
    batch of ``batch_size`` × ``replicas``. The order is first padded by repeating its
    head, so every process runs the same number of steps (as ``DistributedSampler``).
    """

    def __init__(
        self,
        dataset: GraphDataset,
        indices: Sequence[int] | None = None,
        batch_size: int = 64,
        shuffle: bool = False,
        target: str | None = None,
        seed: int = 0,
        replicas: int = 1,
    ):
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        self.dataset = dataset
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.target = target
        self.seed = seed
        self.replicas = replicas
        self.epoch = 0

    def __len__(self) -> int:
        share = -(-len(self.indices) // self.replicas)
        return (share + self.batch_size - 1) // self.batch_size

    def _rank(self) -> int:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"a loader sharded over {self.replicas} processes runs inside a "
                "torch.distributed group (a DDP run); none is initialised"
            )
        if dist.get_world_size() != self.replicas:
            raise RuntimeError(
                f"the loader is sharded over {self.replicas} processes, the "
                f"torch.distributed group has {dist.get_world_size()}"
            )
        return dist.get_rank()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        order = self.indices
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = order[rng.permutation(len(order))]
        if self.replicas > 1 and len(order):
            padded = np.resize(order, -(-len(order) // self.replicas) * self.replicas)
            order = padded[self._rank() :: self.replicas]
        release = Releaser(self.dataset)  # a pass over 10⁶ graphs stays flat in memory
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.dataset.batch(chunk.tolist(), self.target)
            batch.index = torch.from_numpy(chunk.copy())
            yield batch
            release(len(chunk))


#: edges plus bond pairs per inference batch: beyond a few ten thousand, the per-edge
#: tensors leave the CPU caches and a batch of 256 ALIGNN graphs runs 3× slower per
#: structure than one of 32 (benchmarks/models.py, perovskites on 2 cores)
INFERENCE_BUDGET = 20_000
#: beyond 64 graphs a batch is no faster per structure for any architecture, and CGCNN
#: was 1.6× slower at 256 (perovskites, 2 cores: 10,100 against 6,300 structures/s)
LARGEST_INFERENCE_BATCH = 64


def inference_batch_size(
    dataset: GraphDataset,
    indices: Sequence[int] | None = None,
    pair_cost: float = 1.0,
    budget: int = INFERENCE_BUDGET,
    largest: int = LARGEST_INFERENCE_BATCH,
) -> int:
    """A batch size for forward passes without gradients (validation, prediction,
    features): as many graphs as fit ``budget`` nodes + edges + bond pairs (each weighted
    by ``pair_cost``, the model's :attr:`~tlmat.models.base.Backbone.pair_cost`), from a
    sample of the graphs' sizes; between 1 and ``largest``."""
    pool = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    if len(pool) == 0:
        return largest
    sample = pool[np.linspace(0, len(pool) - 1, min(len(pool), 64)).astype(int)]
    graphs = [dataset.graphs.arrays(int(i), copy=False) for i in sample]
    return batch_size_for(graphs, pair_cost, budget, largest)


def batch_size_for(
    graphs,
    pair_cost: float = 1.0,
    budget: int = INFERENCE_BUDGET,
    largest: int = LARGEST_INFERENCE_BATCH,
) -> int:
    """As many of graphs like these (a sample of ``GraphArrays``) as fit ``budget`` nodes
    + edges + ``pair_cost`` × bond pairs; between 1 and ``largest``."""
    sizes = [
        g.num_nodes
        + g.num_edges
        + (0 if g.line_index is None else pair_cost * g.line_index.shape[1])
        for g in graphs
    ]
    return int(np.clip(budget // max(np.mean(sizes) if sizes else 1, 1), 1, largest))
