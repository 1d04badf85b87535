"""Heads on frozen features: a calibrated multi-class probe, an ordinal (CORAL) stage head, per-phenotype heads.

All are linear, trained full-batch with L-BFGS on standardised features (deterministic, seconds on a CPU), and keep
their parameters as plain tensors (`state()` / `from_state()`), so the evaluator saves them as safetensors.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data.manifest import N_STAGES


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


T_MIN, T_MAX = 0.05, 20.0  # the calibration temperature's range


def _lbfgs(params: list[torch.Tensor], loss_fn, iters: int = 200) -> None:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


class Standardizer:
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, x) -> "Standardizer":
        x = _t(x)
        return cls(x.mean(0), x.std(0).clamp_min(1e-6))

    def __call__(self, x) -> torch.Tensor:
        return (_t(x) - self.mean) / self.std

    def state(self, prefix: str) -> dict:
        return {f"{prefix}.mean": self.mean, f"{prefix}.std": self.std}

    @classmethod
    def from_state(cls, state: dict, prefix: str) -> "Standardizer":
        return cls(state[f"{prefix}.mean"], state[f"{prefix}.std"])


class LinearProbe:
    """Multinomial logistic regression (L2 `l2` on the weights) with a temperature fitted on validation data."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, temperature: float = 1.0):
        self.weight, self.bias, self.temperature = weight, bias, float(temperature)

    @classmethod
    def fit(cls, x, y, n_classes: int, l2: float = 1e-2, class_balanced: bool = True) -> "LinearProbe":
        x, y = _t(x), torch.as_tensor(np.asarray(y), dtype=torch.long)
        w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
        b = torch.zeros(n_classes, requires_grad=True)
        counts = torch.bincount(y, minlength=n_classes).float()
        cw = (len(y) / (n_classes * counts.clamp_min(1))) if class_balanced else torch.ones(n_classes)
        cw = torch.where(counts > 0, cw, torch.zeros_like(cw))
        _lbfgs([w, b], lambda: F.cross_entropy(x @ w.t() + b, y, weight=cw) + l2 * (w ** 2).sum() / 2)
        return cls(w.detach(), b.detach())

    def logits(self, x) -> torch.Tensor:
        return _t(x) @ self.weight.t() + self.bias

    def proba(self, x) -> np.ndarray:
        # float64, as the phenotype heads: in float32 p_healthy rounds to 1.0 once a logit gap passes ~17 (a low
        # temperature gets there), and presence_auroc, read off 1 - p_healthy, then ties confident readings
        return torch.softmax(self.logits(x).double() / self.temperature, -1).numpy()

    def calibrate(self, x, y) -> float:
        """Temperature scaling (Guo et al. 2017): the T minimising validation NLL; accuracy is unchanged."""
        logits = self.logits(x).detach()
        y = torch.as_tensor(np.asarray(y), dtype=torch.long)
        log_t = torch.zeros(1, requires_grad=True)
        # bounded inside the loss: on separable validation rows the NLL falls for ever as T -> 0, and an unbounded
        # search runs log T off (to an overflow, NaN) before any clamp afterwards could help
        lo, hi = math.log(T_MIN), math.log(T_MAX)
        _lbfgs([log_t], lambda: F.cross_entropy(logits / log_t.clamp(lo, hi).exp(), y), iters=100)
        t = float(log_t.detach().clamp(lo, hi).exp())
        self.temperature = t if math.isfinite(t) else 1.0
        return self.temperature

    def state(self, prefix: str) -> dict:
        return {f"{prefix}.weight": self.weight, f"{prefix}.bias": self.bias,
                f"{prefix}.temperature": torch.tensor([self.temperature])}

    @classmethod
    def from_state(cls, state: dict, prefix: str) -> "LinearProbe":
        return cls(state[f"{prefix}.weight"], state[f"{prefix}.bias"], float(state[f"{prefix}.temperature"][0]))


class CoralHead:
    """Ordinal regression (CORAL, Cao et al. 2020): one shared weight vector, K-1 ordered thresholds.

    P(stage > k) = sigmoid(w.x + b_k); the continuous severity is the sum of these K-1 probabilities (in 0..K-1),
    the predicted stage is the number of them above 0.5.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight, bias

    @classmethod
    def fit(cls, x, stages, n_stages: int = N_STAGES, l2: float = 1e-2) -> "CoralHead":
        x = _t(x)
        s = torch.as_tensor(np.array(stages, dtype=np.int64))  # a copy: pandas may hand a read-only view
        levels = (s.view(-1, 1) > torch.arange(n_stages - 1).view(1, -1)).float()
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(n_stages - 1, requires_grad=True)
        _lbfgs([w, b], lambda: F.binary_cross_entropy_with_logits((x @ w).view(-1, 1) + b, levels)
               + l2 * (w ** 2).sum() / 2)
        return cls(w.detach(), b.detach())

    def cumulative(self, x) -> np.ndarray:
        return torch.sigmoid((_t(x) @ self.weight).view(-1, 1) + self.bias).numpy()

    def severity(self, x) -> np.ndarray:
        return self.cumulative(x).sum(1)

    def stage(self, x) -> np.ndarray:
        return (self.cumulative(x) > 0.5).sum(1)

    def state(self, prefix: str) -> dict:
        return {f"{prefix}.weight": self.weight, f"{prefix}.bias": self.bias}

    @classmethod
    def from_state(cls, state: dict, prefix: str) -> "CoralHead":
        return cls(state[f"{prefix}.weight"], state[f"{prefix}.bias"])


class PhenotypeHeads:
    """One logistic presence head per phenotype (multi-label), positives re-weighted to balance each head."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight, bias

    @classmethod
    def fit(cls, x, y, l2: float = 1e-2) -> "PhenotypeHeads":
        x, y = _t(x), _t(y)
        pos = y.sum(0)
        pos_weight = ((len(y) - pos) / pos.clamp_min(1)).clamp(1.0, 50.0)
        w = torch.zeros(y.shape[1], x.shape[1], requires_grad=True)
        b = torch.zeros(y.shape[1], requires_grad=True)
        _lbfgs([w, b], lambda: F.binary_cross_entropy_with_logits(x @ w.t() + b, y, pos_weight=pos_weight)
               + l2 * (w ** 2).sum() / 2)
        return cls(w.detach(), b.detach())

    def proba(self, x) -> np.ndarray:
        return torch.sigmoid((_t(x) @ self.weight.t() + self.bias).double()).numpy()

    def state(self, prefix: str) -> dict:
        return {f"{prefix}.weight": self.weight, f"{prefix}.bias": self.bias}

    @classmethod
    def from_state(cls, state: dict, prefix: str) -> "PhenotypeHeads":
        return cls(state[f"{prefix}.weight"], state[f"{prefix}.bias"])
