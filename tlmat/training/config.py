"""Training settings: one pydantic model that equals the CLI flags and the YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tlmat.models.targets import Normalization, TargetSpec


class TrainConfig(BaseModel):
    """Everything that decides a training run (defaults follow the papers where they agree).

    Schedules: ``plateau`` multiplies the LR by ``plateau_factor`` after
    ``plateau_patience`` epochs without improvement, down to ``min_lr`` (Krawczuk &
    Venturi: 0.8, 25, 1e-6); ``cyclic`` is triangular between ``cyclic_low`` × LR and LR
    with a period of ``cyclic_period`` epochs (Hoffmann et al.); ``onecycle`` warms up
    from LR/25 to LR over ``warmup_fraction`` of the epochs, then decays it along a
    cosine to LR/(25·10⁴) at the last step (for pretraining sources on a fixed budget);
    ``step`` multiplies the LR by ``step_factor`` at each epoch of ``step_milestones``
    (the CGCNN code's MultiStepLR, which Lee & Asahi keep: ×0.1 at epoch 100).

    Losses: ``l1`` and ``mse`` in the normalised target space; ``gaussian_nll`` trains a
    heteroscedastic model (:class:`~tlmat.models.targets.TargetSpec`: a head of width 2,
    the mean and log-variance of each structure) on the Gaussian negative log-likelihood.
    """

    model_config = ConfigDict(extra="forbid")

    target: str = "target"
    unit: str = ""
    log10: bool = False
    normalization: Normalization = "standard"
    #: the target scales with the cell (eV/cell): atoms are summed, not averaged
    extensive: bool = False
    #: per-element reference values subtracted before fitting (atomic number → unit)
    atom_refs: dict[int, float] | None = None
    loss: Literal["l1", "mse", "gaussian_nll"] = "l1"
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = 0.9
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["none", "plateau", "cyclic", "onecycle", "step"] = "plateau"
    plateau_factor: float = 0.8
    plateau_patience: int = 25
    min_lr: float = 1e-6
    cyclic_period: int = 100
    cyclic_low: float = 0.1
    #: fraction of the ``epochs`` the one-cycle schedule spends warming up to ``lr``
    warmup_fraction: float = Field(0.1, gt=0, lt=1)
    #: the epochs after which the step schedule multiplies the LR by ``step_factor``
    step_milestones: tuple[int, ...] = (100,)
    step_factor: float = Field(0.1, gt=0)
    #: the gradient norm (2-norm over all parameters) is clipped to this, when set
    gradient_clip_val: float | None = Field(None, gt=0)
    #: a frozen prefix of the model (head-only; freeze-first-k where the architecture can
    #: split there) is computed once per structure and reused every epoch
    #: (:mod:`tlmat.training.frozen`)
    cache_frozen: bool = True
    epochs: int = Field(300, ge=1)
    early_stopping_patience: int | None = 50
    batch_size: int = Field(64, ge=1)
    seed: int = 0
    accelerator: Literal["auto", "cpu", "gpu", "mps"] = "auto"
    #: processes (one per GPU, or CPU processes) per node that Lightning trains on; more
    #: than one in all (``devices`` × ``num_nodes``) is data-parallel training (DDP):
    #: every process takes an equal share of each shuffled epoch, so ``batch_size`` is
    #: per process and the batch the optimiser sees is ``batch_size`` × processes
    devices: int = Field(1, ge=1)
    #: machines (SLURM nodes) of a DDP run
    num_nodes: int = Field(1, ge=1)
    #: how Lightning starts a DDP run's processes: ``ddp`` (it relaunches the command
    #: once per device, or a cluster launcher such as ``srun`` started them all),
    #: ``ddp_spawn`` (spawned from this process; one machine), ``auto`` (Lightning's choice)
    ddp_strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    #: Lightning's precision: "32-true", "64-true", "16-mixed" (GPUs) or "bf16-mixed"
    precision: Literal["32-true", "64-true", "16-mixed", "bf16-mixed"] = "32-true"
    progress_bar: bool = True

    @model_validator(mode="after")
    def _loss_fits_the_target(self) -> TrainConfig:
        if self.loss == "gaussian_nll" and self.normalization == "tanh":
            # the tanh map is not linear: its space's variance has no value in the unit
            raise ValueError(
                "loss gaussian_nll predicts a variance, which needs normalization "
                "'standard' or 'none' (tanh is not linear, so its variance has no value in "
                "the target's unit)"
            )
        return self

    @property
    def processes(self) -> int:
        """Training processes in all (``devices`` × ``num_nodes``)."""
        return self.devices * self.num_nodes

    def target_spec(self) -> TargetSpec:
        """The (unfitted) specification of the target this run learns."""
        same = {"unit", "log10", "normalization", "extensive", "atom_refs"}
        return TargetSpec(
            name=self.target,
            heteroscedastic=self.loss == "gaussian_nll",
            **self.model_dump(include=same),
        )

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        """Settings from a YAML mapping (:func:`yaml_settings`), ``overrides`` (not
        ``None``) winning."""
        data = yaml_settings(path)
        try:
            return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
        except ValueError as error:  # pydantic's ValidationError: say which file
            error.add_note(f"in {path}")
            raise


def yaml_settings(path: str | Path) -> dict:
    """The mapping a YAML settings file holds (empty for an empty file); a file that is
    no YAML mapping of plain values (a python tag, a list, broken syntax) is a
    ``ValueError`` naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:  # safe_load refuses tags such as !!python/object
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML settings: {problem}{where}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping of settings (a {type(data).__name__})")
    return data
