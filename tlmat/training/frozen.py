"""A frozen prefix computed once: when a strategy freezes the groups a model runs first
(head-only: the whole backbone; freeze-first-k: the embedding and k interactions), their
output for a structure never changes while the rest trains, so it is computed in the
first epoch and read back in every later one. An epoch then costs what the layers that
learn cost: for a foundation backbone with a new head, a small MLP instead of the
backbone's forward pass.

The cached state is what :meth:`~tlmat.models.base.Backbone.state_after` gives, computed
for each structure alone and kept in memory up to a size limit. Beyond it, the states go
to disk beside the graph cache the dataset was read from
(``<cache>/frozen-<graph settings>/<digest of the frozen weights and split>/<graph>.pt``,
read with ``weights_only=True``; a damaged file is computed again), so a data set larger
than memory still trains at the cached speed and a later run from the same source reads
them back; a dataset without a writable graph cache computes them each epoch as before.
Frozen groups run in eval mode (:func:`keep_frozen_in_eval`), so their output does not
depend on the epoch; resuming from it equals the uncached forward pass exactly on the
same batch, and to float32 rounding on another (matrix products of another row count
round their last bits differently), which is why each structure's state is computed
alone: the same whatever batch it first came in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch_geometric.data import Batch

from tlmat.data.dataset import GraphDataset
from tlmat.models.base import CrystalModel
from tlmat.training.rundir import replaced

logger = logging.getLogger(__name__)

#: the most memory the cached states of one run may take (bytes)
MAX_BYTES = 2 * 1024**3


def frozen_split(model: CrystalModel) -> str | None:
    """The group after which ``model``'s forward pass is split: the last split point of
    its backbone (:meth:`~tlmat.models.base.Backbone.split_points`) inside its frozen
    leading groups, when those include an interaction and no weight of theirs trains
    (LoRA's adapters do); else ``None``."""
    groups = model.backbone.groups()
    frozen = set(getattr(model, "frozen_groups", []))
    prefix: list[str] = []
    for name, module in groups.items():
        if name not in frozen or any(p.requires_grad for p in module.parameters()):
            break
        prefix.append(name)
    points = [g for g in model.backbone.split_points() if g in prefix]
    if not points or "interactions.0" not in prefix[: prefix.index(points[-1]) + 1]:
        return None
    return points[-1]


class FrozenPrefix:
    """The states after ``group`` of the structures seen so far, by their position in
    the dataset (``batch.index``)."""

    def __init__(
        self, model: CrystalModel, group: str, max_bytes: int = MAX_BYTES, to_disk: bool = True
    ):
        self.model, self.group, self.max_bytes, self.to_disk = model, group, max_bytes, to_disk
        self.rows: dict[int, dict[str, torch.Tensor]] = {}
        self.bytes = 0
        self._digest: str | None = None

    @classmethod
    def of(cls, model: CrystalModel) -> FrozenPrefix | None:
        """The cache for ``model`` as its strategy froze it, or ``None`` when nothing of
        it is frozen at the start (or its head reads pooled layer features)."""
        if model.head.pooled_layers is not None:
            return None
        group = frozen_split(model)
        return None if group is None else cls(model, group, MAX_BYTES)

    @torch.no_grad()
    def state(
        self, batch: Batch, dataset: GraphDataset | None = None
    ) -> tuple[str, dict[str, torch.Tensor]]:
        """``(group, state)`` for ``batch``, as :meth:`CrystalModel.forward` resumes. A
        structure not seen yet is computed alone from ``dataset`` (the batch's), so that
        its state does not depend on the batch it first came in: a resumed run, whose
        batches come in another order, reads the same numbers. Without ``dataset``, or
        once the cache is full, the batch is computed as a whole."""
        keys = batch.index.tolist()
        missing = [key for key in dict.fromkeys(keys) if key not in self.rows]
        full = self.bytes >= self.max_bytes
        folder = self.folder(dataset) if missing and full and dataset is not None else None
        if missing and (dataset is None or (full and folder is None)):
            computed = self.model.backbone.state_after(batch, self.group)
            if self.bytes < self.max_bytes:
                self._keep(keys, computed)
            return self.group, {name: values for name, (values, _) in computed.items()}
        device = batch.z.device
        read = {key: self._alone(key, dataset, folder, device) for key in missing}
        rows = [self.rows[k] if k in self.rows else read[k] for k in keys]
        return self.group, {name: torch.cat([row[name] for row in rows]) for name in rows[0]}

    def _alone(
        self, key: int, dataset: GraphDataset, folder: Path | None, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Structure ``key``'s state, computed alone: kept in memory while there is room,
        else read from (or first written to) ``folder``."""
        if self.bytes < self.max_bytes or folder is None:
            self._keep([key], self._computed(key, dataset, device))
            return self.rows[key]
        shard, row, _ = dataset.graphs.entries[key]
        path = folder / f"{shard}-{row}.pt"
        if path.exists():
            try:
                return torch.load(path, map_location=device, weights_only=True)
            except Exception as error:  # a file cut short or overwritten: computed again
                logger.warning("%s unreadable (%s); computing it again", path, error)
        computed = self._computed(key, dataset, device)
        state = {name: values.detach().clone() for name, (values, _) in computed.items()}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with replaced(path) as partial:  # a reader never sees half a file
                torch.save({k: v.cpu() for k, v in state.items()}, partial)
        except OSError as error:
            logger.warning("frozen states not written to %s (%s)", folder, error)
            self.to_disk = False
        return state

    def _computed(self, key: int, dataset: GraphDataset, device: torch.device):
        return self.model.backbone.state_after(dataset.batch([key]).to(device), self.group)

    def folder(self, dataset: GraphDataset) -> Path | None:
        """Where states that do not fit in memory go: beside ``dataset``'s graph cache,
        under a digest of the frozen weights, the split and the graph settings; ``None``
        when the graphs have no writable cache (or ``to_disk`` is off)."""
        cache = getattr(getattr(dataset, "graphs", None), "cache", None)
        if not self.to_disk or cache is None or cache.unwritable is not None:
            return None
        if self._digest is None:
            self._digest = prefix_digest(self.model, self.group)
        return cache.directory.parent / f"frozen-{cache.settings.key()}" / self._digest

    def _keep(self, keys: list[int], computed: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        for name, (values, owner) in computed.items():
            if owner.numel() > 1 and bool((owner[1:] < owner[:-1]).any()):
                raise ValueError(f"{self.group} state {name!r}: rows not grouped by crystal")
            counts = torch.bincount(owner, minlength=len(keys)).tolist()
            for key, piece in zip(keys, values.detach().split(counts), strict=True):
                stored = self.rows.setdefault(key, {})
                if name not in stored:
                    stored[name] = piece.clone()  # not a view that keeps the batch alive
                    self.bytes += piece.numel() * piece.element_size()
        if self.bytes >= self.max_bytes:
            logger.info(
                "frozen %s states: %d MiB kept for %d structures; the others are computed "
                "every epoch",
                self.group,
                self.bytes // 1024**2,
                len(self.rows),
            )


def prefix_digest(model: CrystalModel, group: str) -> str:
    """A short SHA-256 of what decides a frozen state: the architecture's settings, the
    split point and every weight and buffer of the groups up to it."""
    digest = hashlib.sha256(json.dumps(model.config.model_dump(), sort_keys=True).encode())
    digest.update(group.encode())
    for name, module in model.backbone.groups().items():
        for key, value in module.state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        if name == group:
            break
    return digest.hexdigest()[:20]
