"""Configuration: frozen section objects (:mod:`.model`) and the YAML loader."""

from headscale_tw.config.model import Config

__all__ = ["Config"]
