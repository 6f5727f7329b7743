"""`litgpt serve`: continuous batching over a paged KV cache, split as vLLM splits it. `paged` is the page pool and
the block tables, `scheduler` decides who runs, waits or is preempted, `engine` is the loop that runs the model."""
