"""litgpt: a GPT library with multi-head latent attention done right."""

from litgpt.api import LLM
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer

__all__ = ["GPT", "Config", "LLM", "Tokenizer"]
