"""Weights this project trains and ships in `weights/`, by the preset they belong to.

`weights/<preset>/` holds `vae.safetensors`, the `discriminator.safetensors` trained against that VAE's
reconstructions, `CARD.md` (how they were made, what they measure) and `card.json` (the measured figures).
"""

from dataclasses import dataclass
from pathlib import Path

WEIGHTS_ROOT = Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class ShippedWeights:
    preset: str

    @property
    def folder(self) -> Path:
        return WEIGHTS_ROOT / self.preset

    @property
    def vae(self) -> Path:
        return self.folder / "vae.safetensors"

    @property
    def discriminator(self) -> Path:
        return self.folder / "discriminator.safetensors"

    @property
    def card(self) -> Path:
        return self.folder / "card.json"


SHIPPED = {"small-f8": ShippedWeights("small-f8")}


def shipped_weights(spec: object) -> ShippedWeights | None:
    """The shipped weights of preset `spec`; None for other specs. Raises FileNotFoundError when the preset
    ships weights but this copy of the project lacks them (a partial checkout)."""
    shipped = SHIPPED.get(spec) if isinstance(spec, str) else None
    if shipped is not None and not (shipped.vae.is_file() and shipped.discriminator.is_file()):
        raise FileNotFoundError(f"the {spec} preset's weights are missing from {shipped.folder}: "
                                "this copy of the project is incomplete")
    return shipped
