"""What a model predicts and how targets are normalised for training: one specification,
decoded in one place.

``TargetSpec`` maps physical values (e.g. eV/atom, GPa) to the network's space and back:
optional log10, then standardisation, Lee & Asahi's tanh normalisation
y' = ½{tanh(0.01 (y − μ)/s) + 1}, or nothing. It is fitted on a training split only and
travels in the checkpoint.

Extensive targets (``extensive=True``, e.g. a total energy in eV/cell) follow schnetpack:
μ and s are fitted on per-atom values y/n, the model sums atom contributions, and
y = s·Σᵢ oᵢ + n·μ. Optional per-element reference energies (``atom_refs``, in the target's
unit per atom of that element) are subtracted first: y − Σᵢ E_ref(Zᵢ) is what is learnt.

Heteroscedastic targets (``heteroscedastic=True``, trained with the Gaussian negative
log-likelihood, Lakshminarayanan et al. 2017) have a head of width 2: the mean and the
log-variance v of each structure, both in the normalised space. :meth:`TargetSpec.decode`
gives the mean as for any target; :meth:`TargetSpec.decode_variance` gives the variance
in the target's unit², s²·exp(v) (s = 1 without normalisation). For a log10 target it is
the variance of log10 y, in (log10 unit)². For an extensive target v is per atom, like
the mean: the variance of the cell's value is n²·s²·exp(v).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, model_validator

Normalization = Literal["standard", "tanh", "none"]

#: Bounds of a heteroscedastic head's log-variance (normalised space). The Gaussian NLL is
#: unbounded below as σ → 0 on a structure the model fits exactly, and its gradient
#: (y − μ)²/σ² explodes there; the lower bound caps 1/σ² at e¹⁰ ≈ 2·10⁴. The upper one
#: stops a model from explaining a hard structure away with an ever wider σ (e⁵ ≈ 150
#: target standard deviations is already no information). Both keep exp(±v) finite in
#: float16 (mixed precision), whose largest value is 65,504.
LOG_VARIANCE_RANGE = (-10.0, 10.0)


class TargetSpec(BaseModel):
    """Name, unit, transform and normalisation of one predicted property."""

    model_config = ConfigDict(extra="forbid")

    name: str = "target"
    unit: str = ""
    log10: bool = False
    normalization: Normalization = "standard"
    mean: float = 0.0
    std: float = 1.0
    task: Literal["regression", "classification"] = "regression"
    #: the property scales with the number of atoms (eV/cell, not eV/atom)
    extensive: bool = False
    #: per-element reference values (atomic number → target unit), subtracted before
    #: normalising (e.g. isolated-atom energies for a total energy)
    atom_refs: dict[int, float] | None = None
    #: the values are log10 of a quantity in this unit (``unit`` then reads "log10 GPa");
    #: ``10 ** value`` gives it back (``tlmat predict --inverse-transform``)
    log10_of: str | None = None
    #: class labels of a classifier, in output order (``["semiconductor", "metal"]``)
    classes: tuple[str, ...] = ()
    #: the model also predicts each structure's variance (loss ``gaussian_nll``): its head
    #: gives the mean and the log-variance, both in the normalised space
    heteroscedastic: bool = False

    def column(self) -> str:
        """The header of this target's predictions: name and unit, ``K_VRH (log10 GPa)``."""
        return f"{self.name} ({self.unit})" if self.unit else self.name

    @model_validator(mode="after")
    def _consistent(self) -> TargetSpec:
        per_atom = self.extensive or self.atom_refs is not None
        if per_atom and (self.log10 or self.normalization == "tanh"):
            raise ValueError(
                f"target {self.name!r}: an extensive target or per-element references need "
                "normalization 'standard' or 'none' and no log10"
            )
        if per_atom and self.task != "regression":
            raise ValueError(f"target {self.name!r}: classification targets are intensive")
        if self.heteroscedastic and self.task != "regression":
            raise ValueError(
                f"target {self.name!r}: a heteroscedastic head (mean and variance, loss "
                "gaussian_nll) needs a regression target, not a classification"
            )
        if self.heteroscedastic and self.normalization == "tanh":
            # the tanh map is not linear: a variance in its space has no single value in
            # the target's unit
            raise ValueError(
                f"target {self.name!r}: a heteroscedastic head (loss gaussian_nll) needs "
                "normalization 'standard' or 'none', not 'tanh'"
            )
        return self

    @property
    def out_dim(self) -> int:
        """The head's width for this target: 1, 2 when heteroscedastic (mean and
        log-variance), one per class for a classifier."""
        if self.task == "classification":
            return len(self.classes) or 2
        return 2 if self.heteroscedastic else 1

    @property
    def pooling(self) -> Literal["mean", "sum"]:
        """How a model aggregates atoms for this target: sum for extensive, else mean."""
        return "sum" if self.extensive else "mean"

    @property
    def needs_atoms(self) -> bool:
        """Whether encoding and decoding need the batch's atoms (counts, elements)."""
        return self.extensive or self.atom_refs is not None

    # -- per-structure helpers -------------------------------------------------------
    def _reference(self, z: torch.Tensor, graph: torch.Tensor, n_graphs: int) -> torch.Tensor:
        table = torch.zeros(int(max(self.atom_refs or {0: 0})) + 1, dtype=torch.float64)
        for element, value in (self.atom_refs or {}).items():
            table[int(element)] = value
        per_atom = table[z.clamp(max=len(table) - 1)] * (z < len(table))
        out = torch.zeros(n_graphs, dtype=torch.float64)
        return out.index_add_(0, graph, per_atom)

    def _atoms(self, batch, n_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Atom counts and reference sums per structure of a PyG batch."""
        if batch is None:
            raise ValueError(
                f"target {self.name!r} is extensive or has element references: its "
                "values can only be encoded or decoded with the structures' atoms"
            )
        graph = batch.batch.cpu()
        counts = torch.bincount(graph, minlength=n_graphs).double()
        refs = (
            self._reference(batch.z.cpu(), graph, n_graphs)
            if self.atom_refs
            else torch.zeros(n_graphs, dtype=torch.float64)
        )
        return counts, refs

    def _per_structure(self, batch, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Atom counts and reference sums shaped and placed like ``like``."""
        counts, refs = self._atoms(batch, like.shape[0])
        shape = (-1,) + (1,) * (like.dim() - 1)
        return counts.reshape(shape).to(like.device), refs.reshape(shape).to(like.device)

    def fit(
        self, values: np.ndarray | torch.Tensor, atomic_numbers: Sequence[np.ndarray] | None = None
    ) -> TargetSpec:
        """A copy with mean/std fitted to (training) ``values`` in physical units;
        ``atomic_numbers`` (one array per structure) are needed for extensive targets and
        element references."""
        y = np.asarray(values, dtype=np.float64)
        if self.needs_atoms:
            if atomic_numbers is None or len(atomic_numbers) != len(y):
                raise ValueError(f"target {self.name!r}: fitting needs each structure's atoms")
            refs = np.array(
                [sum((self.atom_refs or {}).get(int(z), 0.0) for z in zs) for zs in atomic_numbers]
            )
            counts = np.array([len(zs) for zs in atomic_numbers], dtype=np.float64)
            y = y - refs
            if self.extensive:
                y = y / counts
        if self.log10:
            bad = np.flatnonzero(~(y > 0))
            if len(bad):
                # only positions are known here; datasets name the ids, and drop them
                # first, with GraphDataset.require_positive
                raise ValueError(
                    f"log10 of {self.name!r} needs positive values: {len(bad)} of {len(y)} "
                    f"are ≤ 0 (positions {', '.join(map(str, bad[:10]))}"
                    f"{', …' if len(bad) > 10 else ''})"
                )
            y = np.log10(y)
        std = float(y.std()) if y.size > 1 else 1.0
        return self.model_copy(update={"mean": float(y.mean()), "std": std if std > 0 else 1.0})

    def encode(self, y: torch.Tensor, batch=None) -> torch.Tensor:
        """Physical units → network space (``batch``: the structures, for extensive
        targets and element references)."""
        if self.task == "classification":
            return y
        if self.needs_atoms:
            counts, refs = self._per_structure(batch, y)
            y64 = y.double() - refs
            if self.normalization == "standard":
                y64 = (y64 - (counts if self.extensive else 1.0) * self.mean) / self.std
            return y64.to(y.dtype)
        if self.log10:
            y = torch.log10(y)
        if self.normalization == "standard":
            return (y - self.mean) / self.std
        if self.normalization == "tanh":
            return 0.5 * (torch.tanh(0.01 * (y - self.mean) / self.std) + 1.0)
        return y

    def split_outputs(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A heteroscedastic model's outputs (n, 2) as the mean and the raw log-variance,
        each (n,), in the normalised space."""
        if not self.heteroscedastic:
            raise ValueError(
                f"target {self.name!r} is not heteroscedastic: the model predicts no "
                "variance (train it with loss gaussian_nll)"
            )
        if out.dim() == 0 or out.shape[-1] != 2:
            raise ValueError(
                f"target {self.name!r} is heteroscedastic: the model must give 2 outputs "
                f"(mean, log-variance) per structure, got shape {tuple(out.shape)}"
            )
        return out[..., 0], out[..., 1]

    def log_variance(self, out: torch.Tensor, batch=None) -> torch.Tensor:
        """Each structure's log-variance in the normalised space (that of :meth:`encode`),
        clamped to :data:`LOG_VARIANCE_RANGE`; for an extensive target the head's value
        is per atom and the cell's is that + 2 ln n."""
        _, raw = self.split_outputs(out)
        if not self.extensive:
            return raw.clamp(*LOG_VARIANCE_RANGE)
        counts, _ = self._per_structure(batch, raw)
        counts = counts.to(raw.dtype)
        # the model pools every output alike, summing over atoms for an extensive target
        # (:attr:`pooling`): divided back, the log-variance is the atoms' mean
        return (raw / counts).clamp(*LOG_VARIANCE_RANGE) + 2.0 * torch.log(counts)

    def decode_variance(self, out: torch.Tensor, batch=None) -> torch.Tensor:
        """Each structure's predicted variance in the target's unit²: s²·exp(v) after
        standardisation, exp(v) without; for a log10 target the variance of log10 y, in
        (log10 unit)²."""
        variance = torch.exp(self.log_variance(out, batch).double())
        if self.normalization == "standard":
            variance = variance * self.std**2
        return variance.to(out.dtype)

    def decode(self, out: torch.Tensor, batch=None) -> torch.Tensor:
        """Network space → physical units (class probabilities for classification; the
        mean of a heteroscedastic model)."""
        if self.task == "classification":
            return torch.softmax(out, dim=-1)
        if self.heteroscedastic:
            out, _ = self.split_outputs(out)
        if self.needs_atoms:
            counts, refs = self._per_structure(batch, out)
            y = out.double()
            if self.normalization == "standard":
                y = y * self.std + (counts if self.extensive else 1.0) * self.mean
            return (y + refs).to(out.dtype)
        if self.normalization == "standard":
            y = out * self.std + self.mean
        elif self.normalization == "tanh":
            inner = (2.0 * out - 1.0).clamp(-1 + 1e-7, 1 - 1e-7)
            y = self.mean + self.std * torch.atanh(inner) / 0.01
        else:
            y = out
        return torch.pow(10.0, y) if self.log10 else y
