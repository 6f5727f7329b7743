"""litgpt: a GPT library with multi-head latent attention done right."""

from litgpt.config import Config
from litgpt.model import GPT

__all__ = ["GPT", "Config"]
