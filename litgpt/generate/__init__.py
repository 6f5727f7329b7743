"""Generation: `base` (prefill, the decode step, sampling, `litgpt generate`) and `chat` (`litgpt chat`)."""
