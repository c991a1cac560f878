"""The Lightning module: loss in the normalised target space, MAE in physical units."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from tlmat.models.base import CrystalModel
from tlmat.models.targets import TargetSpec
from tlmat.training.config import TrainConfig
from tlmat.training.frozen import FrozenPrefix
from tlmat.training.replay import Replay
from tlmat.transfer.strategies import keep_frozen_in_eval


class NonFiniteError(ArithmeticError):
    """A training loss or validation error became NaN or infinite."""


def gaussian_nll(mean: torch.Tensor, log_variance: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean Gaussian negative log-likelihood of ``y`` under N(mean, exp(log_variance)),
    ½·[ln 2π + v + (y − μ)²·e⁻ᵛ] per structure (Lakshminarayanan et al. 2017), in the
    normalised space. Written with the log-variance, so that no 1/σ² is ever formed."""
    return (
        0.5
        * (math.log(2 * math.pi) + log_variance + (y - mean) ** 2 * torch.exp(-log_variance)).mean()
    )


class PropertyModule(L.LightningModule):
    """Trains a :class:`CrystalModel` on one target with the given parameter groups."""

    def __init__(
        self,
        model: CrystalModel,
        target: TargetSpec,
        config: TrainConfig,
        param_groups: list[dict[str, Any]],
        steps_per_epoch: int,
        replay: Replay | None = None,
    ):
        super().__init__()
        self.model = model
        self.target = target
        self.config = config
        self.param_groups = param_groups
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.train_loader = None  # set by fit(); its shuffle order follows the epoch
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.frozen = FrozenPrefix.of(model) if config.cache_frozen else None
        self.replay = replay
        if replay is not None:  # its frozen head: a submodule, so it moves with the model
            self.replay_head = replay.head
        self._replay_batches: list = []
        # the epoch's mean training loss, kept in last.ckpt: Lightning logs it only after
        # the checkpoint is written, so a run killed in between would lose that log row.
        # Summed as Lightning sums it (float32, loss × batch size), so the row is the same.
        self._epoch_loss = torch.zeros(())
        self._epoch_count = 0
        # L2-SP: the weights as they start, the source's (a resumed run loads its
        # checkpoint after this, so the anchors stay the source's)
        self.anchors = [
            (group["l2_sp"], p, p.detach().clone())
            for group in param_groups
            if group.get("l2_sp")
            for p in group["params"]
        ]
        # plain values only, so Lightning checkpoints load with weights_only=True
        self.save_hyperparameters({"config": config.model_dump(), "target": target.model_dump()})

    def forward(self, batch) -> torch.Tensor:
        resume = None
        if self.frozen is not None:
            resume = self.frozen.state(batch, getattr(self.train_loader, "dataset", None))
        out = self.model(batch, resume)
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    def _loss(self, prediction: torch.Tensor, y: torch.Tensor, batch) -> torch.Tensor:
        encoded = self.target.encode(y, batch)
        if self.config.loss == "gaussian_nll":
            mean, _ = self.target.split_outputs(prediction)
            return gaussian_nll(mean, self.target.log_variance(prediction, batch), encoded)
        if self.config.loss == "mse":
            return F.mse_loss(prediction, encoded)
        return F.l1_loss(prediction, encoded)

    def on_train_epoch_start(self) -> None:
        keep_frozen_in_eval(self.model)
        self._epoch_loss = torch.zeros(())
        self._epoch_count = 0
        if self.replay is not None:
            self._replay_batches = self.replay.batches(
                self.current_epoch, self.config.seed, self.config.batch_size
            )
        if self.train_loader is not None:
            self.train_loader.set_epoch(self.current_epoch)

    def on_fit_start(self) -> None:
        self.anchors = [(a, p, start.to(p.device)) for a, p, start in self.anchors]

    def _drift(self) -> torch.Tensor:
        """The L2-SP penalty Σ α·‖θ − θ_source‖² over the anchored weights."""
        return sum(
            (alpha * (p - start).pow(2).sum() for alpha, p, start in self.anchors),
            torch.zeros((), device=self.device),
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch), batch.y, batch)
        if self.anchors:
            loss = loss + self._drift()
        if self.replay is not None:
            chunk = self._replay_batches[batch_idx % len(self._replay_batches)]
            loss = loss + self.replay.loss(chunk, self.device)
        if not torch.isfinite(loss):
            # stop before the optimiser spreads it into the weights and a checkpoint
            raise NonFiniteError(
                f"epoch {self.current_epoch}, batch {batch_idx}: training loss is {loss.item()}"
            )
        self._epoch_loss = self._epoch_loss + loss.detach().cpu() * batch.num_graphs
        self._epoch_count += batch.num_graphs
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            batch_size=batch.num_graphs,
            prog_bar=True,
            sync_dist=self.config.processes > 1,  # each DDP process saw its share
        )
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_error = torch.zeros((), dtype=torch.float64)
        self._val_count = 0

    def validation_step(self, batch, batch_idx: int) -> None:
        prediction = self(batch)
        # every DDP process validates on the whole validation set (the loader is not
        # sharded), so the value is the same on each; sync_dist only averages equals
        distributed = self.config.processes > 1
        self.log(
            "val_loss",
            self._loss(prediction, batch.y, batch),
            batch_size=batch.num_graphs,
            sync_dist=distributed,
        )
        errors = (self.target.decode(prediction, batch) - batch.y).abs()
        self._val_error += errors.sum().detach().double().cpu()
        self._val_count += errors.numel()
        self.log(
            "val_mae",
            errors.mean(),
            batch_size=batch.num_graphs,
            prog_bar=True,
            sync_dist=distributed,
        )

    def on_validation_epoch_end(self) -> None:
        # runs before the checkpoint callback: a non-finite epoch is never saved
        if self._val_count and not torch.isfinite(self._val_error):
            raise NonFiniteError(
                f"epoch {self.current_epoch}: validation MAE is {float(self._val_error)}"
            )
        # weights and buffers (batch-norm statistics can overflow while outputs look fine)
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NonFiniteError(f"epoch {self.current_epoch}: {name} is not finite")
        # The plateau schedule is stepped here, not by Lightning: Lightning steps it after
        # the last checkpoint is written, so a resumed run would miss one step.
        if self.plateau is not None and self._val_count and not self.trainer.sanity_checking:
            self.plateau.step(float(self._val_error / self._val_count))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.plateau is not None:
            checkpoint["tlmat_plateau"] = self.plateau.state_dict()
        if self._epoch_count:
            mean = self._epoch_loss / torch.tensor(self._epoch_count)
            checkpoint["tlmat_train_loss"] = float(mean)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._plateau_state = checkpoint.get("tlmat_plateau")

    def configure_optimizers(self):
        c = self.config
        if c.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.param_groups, lr=c.lr, momentum=c.momentum)
        elif c.optimizer == "adamw":
            optimizer = torch.optim.AdamW(self.param_groups, lr=c.lr)
        else:
            optimizer = torch.optim.Adam(self.param_groups, lr=c.lr)
        if c.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=c.plateau_factor, patience=c.plateau_patience, min_lr=c.min_lr
            )
            if getattr(self, "_plateau_state", None) is not None:
                self.plateau.load_state_dict(self._plateau_state)
            return optimizer
        scheduler = self._per_step_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        # stepped per optimiser step, so that Lightning keeps its count in every checkpoint
        # and a resumed run follows the same schedule
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _per_step_scheduler(self, optimizer):
        """The cyclic, step or one-cycle schedule of the learning rate, in optimiser steps
        (``None`` for ``none``)."""
        c = self.config
        if c.scheduler == "cyclic":
            half = max(c.cyclic_period * self.steps_per_epoch // 2, 1)
            return torch.optim.lr_scheduler.CyclicLR(
                optimizer,
                base_lr=[g["lr"] * c.cyclic_low for g in self.param_groups],
                max_lr=[g["lr"] for g in self.param_groups],
                step_size_up=half,
                mode="triangular",
                cycle_momentum=c.optimizer == "sgd",
            )
        if c.scheduler == "step":  # milestones in epochs, counted in steps
            milestones = [m * self.steps_per_epoch for m in c.step_milestones]
            return torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=milestones, gamma=c.step_factor
            )
        if c.scheduler == "onecycle":
            # warm-up then cosine decay to ~0 over exactly ``epochs``: on a fixed epoch
            # budget it ends lower than a plateau schedule, which never gets to decay
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[g["lr"] for g in self.param_groups],
                total_steps=c.epochs * self.steps_per_epoch,
                pct_start=c.warmup_fraction,
                cycle_momentum=c.optimizer == "sgd",
            )
        return None
