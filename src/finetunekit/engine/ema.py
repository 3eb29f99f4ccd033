"""An exponential moving average of a model's weights (``train.ema_decay``).

After every optimizer step, ``ema = decay_t * ema + (1 - decay_t) * weights`` for every floating-
point parameter and buffer (integer buffers are copied), with ``decay_t = min(decay, (1 + t) / (10 + t))``
at update ``t``: early updates follow the weights closely, so a run of a few hundred steps is not
dominated by the initial weights. Parameters that do not change (frozen ones) stay bitwise equal.

The trainer evaluates, keeps the best epoch of, and saves the averaged weights; checkpoints hold
both the raw weights (training continues from them) and the average (``ema.safetensors``).

Example::

    ema = ModelEMA(model, decay=0.999)
    ...  # optimizer.step()
    ema.update(model)
    with ema.applied(model):
        evaluate(model)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class ModelEMA:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if shadow.is_floating_point():
                # lerp: shadow + weight * (value - shadow), exactly shadow when nothing changed
                shadow.lerp_(value.to(shadow.dtype), weight)
            else:
                shadow.copy_(value)

    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the averaged weights into ``model`` (in place: optimizer references stay valid)."""
        model.load_state_dict(self.shadow)

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The averaged weights inside the block, the raw ones restored after it."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield
        finally:
            model.load_state_dict(raw)

    # -- checkpoints: tensors (safetensors) and JSON kept apart --------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.shadow, {"updates": self.updates, "decay": self.decay}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        missing = sorted(set(self.shadow) - set(tensors))
        if missing:
            raise KeyError(f"averaged weights lack {', '.join(missing[:3])}")
        for name, shadow in self.shadow.items():
            shadow.copy_(tensors[name])
        self.updates = int(state["updates"])
