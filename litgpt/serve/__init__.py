"""`litgpt serve`: continuous batching over a paged KV cache, split as vLLM splits it. `paged` is the page pool and
the block tables, `scheduler` decides who runs, waits or is preempted, `engine` is the loop that runs the model, and
`api` the OpenAI-compatible HTTP server over the engine."""

from litgpt.serve.engine import Engine, GenerationRequest, QueueFull, RequestStream, TokenEvent

__all__ = ["Engine", "GenerationRequest", "QueueFull", "RequestStream", "TokenEvent"]
