"""Random numbers for the random methods (PCGrad, GradDrop).

By default they draw from torch's global generators, so ``torch.manual_seed`` fixes them (and
they match torchjd's draws call for call). With ``seed`` set, a private generator per device is
used instead: every process of a distributed run then draws the same numbers whatever its global
seed, which a distributed run needs (all ranks must compute the same update).
"""

from __future__ import annotations

import torch


class TorchRandom:
    """Per-device ``torch.Generator``s seeded with ``seed``, or the global ones when None."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(torch.device(device))
        if key not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._generators[key] = gen
        return self._generators[key]

    def state(self) -> dict[str, torch.Tensor]:
        return {key: gen.get_state() for key, gen in self._generators.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            self.generator(key)
            self._generators[key].set_state(value)
