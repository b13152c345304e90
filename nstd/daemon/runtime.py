"""What a reload swaps: the config and its decoded styles, as one immutable value."""

from __future__ import annotations

from dataclasses import dataclass, replace

from nstd import config as config_mod
from nstd import weights
from nstd.config import Config
from nstd.daemon.styles import StyleBook


@dataclass(frozen=True)
class Runtime:
    cfg: Config
    styles: StyleBook

    @classmethod
    def load(cls, cfg: Config) -> "Runtime":
        return cls(cfg, StyleBook.load(cfg))

    def reloaded(self) -> "Runtime":
        """The config file read again: its style set and transfer settings, checked whole.

        Folders and worker settings keep their running values: they need a restart.
        Raises NstdError naming the problem, and then nothing changes."""
        fresh = config_mod.load(self.cfg.path)
        styles = StyleBook.load(fresh)
        for model_id in fresh.model_ids():
            weights.verify(fresh.models_dir or weights.default_models_dir(), model_id)
        cfg = replace(self.cfg, styles=fresh.styles, blends=fresh.blends, transfer=fresh.transfer,
                      output=fresh.output)
        return Runtime(cfg, styles)
