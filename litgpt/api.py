"""The Python API: `LLM.load(checkpoint_dir)` then `llm.generate(prompt)` or `llm.benchmark(...)`.

    from litgpt import LLM
    llm = LLM.load("out/pretrain/debug/final")
    print(llm.generate("def main(", max_new_tokens=30, temperature=0))
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, TextIO, Union

import torch

from litgpt.checkpoint import load_checkpoint, missing_weights_message
from litgpt.config import Config
from litgpt.generate.base import SamplingParams, check_lengths, peak_memory_bytes, resolve_device, resolve_dtype
from litgpt.generate.session import DecodeSession, decode_mode
from litgpt.hub import resolve_checkpoint_dir
from litgpt.kernels._triton import start_warm_up
from litgpt.model import GPT
from litgpt.prompts import PromptStyle, load_prompt_style, prompt_uses_bos
from litgpt.tokenizer import Tokenizer


class LLM:
    """A model with its tokenizer and prompt style, ready to generate.

    Generation runs in a `litgpt.generate.session.DecodeSession`, kept between calls with the same batch size,
    sampling settings and decode mode: a captured or compiled step is made once. Those steps get a KV cache spanning
    the whole context (`model.max_seq_length`) so that later calls reuse them; the eager step (the CPU default)
    gets a cache of exactly prompt + max_new_tokens.
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Optional[Tokenizer] = None,
        prompt_style: Optional[PromptStyle] = None,
        checkpoint_dir: Optional[Path] = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompt_style = prompt_style or PromptStyle()
        self.checkpoint_dir = checkpoint_dir
        self.session: Optional[DecodeSession] = None

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @classmethod
    def load(
        cls,
        checkpoint_dir: Union[str, Path],
        device: Optional[Union[str, torch.device]] = "auto",
        precision: Optional[str] = None,
        prompt_style: Optional[str] = None,
    ) -> "LLM":
        """Load a checkpoint directory (lit_model.pth, model_config.yaml, tokenizer files).

        device: "auto" (CUDA when available), "cpu", "cuda"...; precision: 32-true, bf16-true, 16-true, 64-true
        (default bf16 on CUDA, else float32); prompt_style: a name from `litgpt.prompts.prompt_styles`.
        """
        checkpoint_dir = resolve_checkpoint_dir(checkpoint_dir, option=None)  # ORG/NAME: checkpoints/ORG/NAME
        if not checkpoint_dir.is_dir():
            raise FileNotFoundError(
                f"checkpoint directory {str(checkpoint_dir)!r} does not exist; point at a directory written by "
                "`litgpt pretrain` (e.g. out/pretrain/debug/final)"
            )
        if (checkpoint_dir / "lit_model.pth.lora").is_file() and not (checkpoint_dir / "lit_model.pth").is_file():
            raise FileNotFoundError(missing_weights_message(checkpoint_dir))
        for name in ("model_config.yaml", "lit_model.pth"):
            if not (checkpoint_dir / name).is_file():
                raise FileNotFoundError(
                    f"checkpoint directory {str(checkpoint_dir)!r} is incomplete: it has no {name}; point at a "
                    "directory written by `litgpt pretrain` or a conversion script"
                )
        device = resolve_device(device)
        start_warm_up(device)  # the CUDA context and Triton's key, made while the tokenizer and the weights load
        tokenizer = Tokenizer(checkpoint_dir)  # fails fast, before the weights load, when the files are missing
        style = load_prompt_style(checkpoint_dir, prompt_style)
        model = load_checkpoint(checkpoint_dir, device=device, dtype=resolve_dtype(precision, device))
        return cls(model, tokenizer, style, checkpoint_dir)

    # ------------------------------------------------------------------------------------------------ generation
    def generate(
        self,
        prompt: Union[str, list[str]],
        max_new_tokens: int = 50,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: float = 1.0,
        seed: int = 1234,
        compile: Optional[bool] = None,
    ) -> Union[str, list[str]]:
        """The continuation of `prompt` (a str), or of each prompt of a list (batched, any lengths).

        temperature 0 is greedy. Each row stops at the tokenizer's EOS (or the prompt style's stop tokens).
        compile: None chooses the decode mode by length (`litgpt.generate.session.decode_mode`), True compiles the
        decode step, False does not.
        """
        texts, _ = self.generate_with_stats(
            [prompt] if isinstance(prompt, str) else list(prompt), max_new_tokens, temperature, top_k, top_p, seed,
            compile,
        )
        return texts[0] if isinstance(prompt, str) else texts

    def encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        if self.tokenizer is None:
            raise ValueError("this LLM has no tokenizer; load one with LLM.load(checkpoint_dir)")
        if not prompts:
            raise ValueError("no prompts given; pass a string or a non-empty list of strings")
        tk = self.tokenizer
        bos = prompt_uses_bos(tk)
        encoded = []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt:
                raise ValueError(f"prompt {i} is empty; every prompt needs some text")
            encoded.append(tk.encode(self.prompt_style.apply(prompt), bos=bos))
        vocab = self.model.config.padded_vocab_size
        top = max((int(ids.max()) for ids in encoded if ids.numel()), default=-1)
        if top >= vocab:  # checked here, on the host: on CUDA the model's own check would cost a device sync
            raise ValueError(
                f"the tokenizer gave token id {top}, outside the model's vocabulary of {vocab} ids; load the "
                "tokenizer the checkpoint was trained with"
            )
        return encoded

    def generate_with_stats(
        self,
        prompts: list[str],
        max_new_tokens: int = 50,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: float = 1.0,
        seed: int = 1234,
        compile: Optional[bool] = None,
        stream: Optional[TextIO] = None,
        kernels: bool = True,
    ) -> tuple[list[str], dict]:
        """`generate` for a list of prompts, plus timings, peak memory and KV-cache bytes.

        With `stream` the first prompt as the model reads it (framed by the prompt style, as upstream litgpt's
        generate prints it: a fine-tuned checkpoint's answer follows the style's `### Response:` line or newline,
        not the bare prompt), then each piece of its text, are written to it as they come (the other prompts' texts
        are only returned).
        kernels: False decodes on the pure-torch attention and linear maps instead of the Triton kernels.
        """
        params = SamplingParams(temperature, top_k, top_p)
        prompt_ids = self.encode_prompts(prompts)
        cache_len = check_lengths(self.model, [len(p) for p in prompt_ids], max_new_tokens)
        mode = decode_mode(self.device, max_new_tokens, compile, len(prompts))
        reused = self.session
        session = self.decode_session(len(prompts), cache_len, params, mode, kernels)
        built_s = 0.0 if session is reused else session.build_s
        captured_before = session.step.prepare_s
        session.seed(seed)
        stop_tokens = self.prompt_style.stop_tokens(self.tokenizer)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        if stream is not None:
            stream.write(self.prompt_style.apply(prompts[0]))
            stream.flush()
        if stream is not None and len(prompts) == 1:  # ends at the stop sequence, not at the batch path's next look
            ids, _, ttft = session.stream(prompt_ids[0], max_new_tokens, self.tokenizer, stop_tokens, stream)
            rows = [ids]
        else:
            rows, ttft = session.generate(prompt_ids, max_new_tokens, stop_tokens, stream, self.tokenizer)
        total = time.perf_counter() - t0
        captured_s = session.step.prepare_s - captured_before  # the step's compile/capture at its first call, if now
        new_tokens = sum(len(r) for r in rows)
        decode_time = max(total - ttft - captured_s, 1e-9)
        steps = max(len(r) for r in rows) - 1
        peak, kind = peak_memory_bytes(self.device)
        stats = dict(
            batch=len(prompts),
            prompt_tokens=[len(p) for p in prompt_ids],
            new_tokens=new_tokens,
            time_to_first_token_s=ttft,
            total_s=total,
            decode_s=decode_time,  # total - time to first token - the step's compile/capture (reported in prepare_s)
            decode_tokens_per_s=len(prompts) * steps / decode_time if steps > 0 else 0.0,
            peak_memory_bytes=peak,
            peak_memory_kind=kind,
            kv_cache_bytes=self.model.kv_cache_bytes(),
            mode=mode,
            prepare_s=built_s + captured_s,
        )
        return [self.tokenizer.decode(r) for r in rows], stats

    def decode_session(
        self, batch_size: int, cache_len: int, params: SamplingParams, mode: str, kernels: bool = True
    ) -> DecodeSession:
        """The session for this batch: the last one when it serves (captured and compiled steps are kept), else a
        new one. Captured and compiled steps get a cache of the whole context, so that later calls fit in it."""
        if mode != "eager":
            cache_len = self.model.max_seq_length
        if self.session is None or not self.session.matches(batch_size, cache_len, params, mode, kernels):
            self.session = None  # drop the old step (and its graph) before building the new cache
            self.session = DecodeSession(self.model, batch_size, cache_len, params, mode, kernels)
        return self.session

    # ------------------------------------------------------------------------------------------------ benchmark
    def benchmark(
        self,
        batch_size: int = 1,
        context_length: int = 1024,
        decode_steps: int = 100,
        warmup: int = 10,
        compile: bool = True,
        mode: Optional[str] = None,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
    ) -> dict:
        """Decode speed at a nearly full cache: see `litgpt.benchmark.decode.benchmark_decode` for the fields.

        mode: "eager", "compile" or "cuda_graph" (overrides `compile`, which picks "compile" or "eager").
        """
        from litgpt.benchmark.decode import benchmark_decode

        mode = mode or ("compile" if compile else "eager")
        return benchmark_decode(
            self.model, batch_size, context_length, decode_steps, warmup, mode, SamplingParams(temperature, top_k)
        )

    @classmethod
    def from_config(
        cls, config: Union[str, Config], device: Optional[Union[str, torch.device]] = "auto", precision: Optional[str] = None
    ) -> "LLM":
        """A randomly initialised model with no tokenizer (for `benchmark`): a config or a named config."""
        from litgpt.model import init_weights

        config = Config.from_name(config) if isinstance(config, str) else config
        device = resolve_device(device)
        with torch.device(device):
            model = GPT(config)
        init_weights(model)
        return cls(model.to(dtype=resolve_dtype(precision, device)))
