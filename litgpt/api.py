"""The Python API: `LLM.load(checkpoint_dir)` then `llm.generate(prompt)` or `llm.benchmark(...)`.

    from litgpt import LLM
    llm = LLM.load("out/pretrain/debug/final")
    print(llm.generate("def main(", max_new_tokens=30, temperature=0))
    for piece in llm.generate("def main(", stream=True):   # the text as it is decoded
        print(piece, end="", flush=True)
    llm.save("out/copy")                                     # a checkpoint LLM.load reads back

`LLM.load(name, init="random", tokenizer_dir=DIR)` builds a named config with random weights; `distribute=None`
defers placing the model to `llm.distribute(...)` (one device). `llm.benchmark(prompt=..., num_iterations=N)` times
`generate` (upstream litgpt's keys); without `prompt` it is the decode benchmark (`benchmark_decode`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, TextIO, Union

import torch

from litgpt.checkpoint import load_checkpoint, missing_weights_message
from litgpt.config import Config
from litgpt.generate.base import (
    SamplingParams,
    check_lengths,
    peak_memory_bytes,
    resolve_device,
    resolve_dtype,
    stream_pieces,
)
from litgpt.generate.session import DecodeSession, decode_mode
from litgpt.hub import CHECKPOINTS_ROOT, is_repo_id, resolve_checkpoint_dir
from litgpt.quantize import check_inference_quantize, has_quantized_weights, quantize_linears
from litgpt.kernels._triton import start_warm_up
from litgpt.kv_cache import check_kv_cache_dtype
from litgpt.model import GPT
from litgpt.prompts import PromptStyle, load_prompt_style, prompt_uses_bos
from litgpt.tokenizer import Tokenizer
from litgpt.utils import atomic_directory, chunked_cross_entropy

# what `LLM.save` writes, or may replace, in a checkpoint directory (anything else there is refused)
CHECKPOINT_FILES = frozenset({
    "lit_model.pth", "model_config.yaml", "prompt_style.yaml", "hyperparameters.yaml", "config.json",
    "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
})
# upstream litgpt's `LLM.benchmark` keys, in its order
BENCHMARK_KEYS = ("Seconds total", "Seconds to first token", "Tokens generated", "Inference speed in tokens/sec",
                  "Total GPU memory allocated in GB")


class LLM(torch.nn.Module):
    """A model with its tokenizer and prompt style, ready to generate.

    Generation runs in a `litgpt.generate.session.DecodeSession`, kept between calls with the same batch size,
    sampling settings and decode mode: a captured or compiled step is made once. Those steps get a KV cache spanning
    the whole context (`model.max_seq_length`) so that later calls reuse them; the eager step (the CPU default)
    gets a cache of exactly prompt + max_new_tokens, or of `fixed_kv_cache_size` positions when `distribute` set one.

    `model` is None between `LLM.load(..., distribute=None)` and `llm.distribute(...)` (or `trainer_setup()`);
    `config` is the model's config either way. As upstream litgpt's, the LLM is a `torch.nn.Module` around its model
    (for a LightningModule's attribute): calling it runs the model (`forward`), its state dict is the model's.
    """

    def __init__(
        self,
        model: Optional[GPT],
        tokenizer: Optional[Tokenizer] = None,
        prompt_style: Optional[PromptStyle] = None,
        checkpoint_dir: Optional[Path] = None,
        config: Optional[Config] = None,
    ) -> None:
        if model is None and config is None:
            raise ValueError("LLM needs a model, or the config of the model `distribute` will build")
        super().__init__()
        self.model = model.eval() if model is not None else None
        self.config = config if config is not None else model.config
        self.tokenizer = tokenizer
        self.prompt_style = prompt_style or PromptStyle()
        self.checkpoint_dir = checkpoint_dir
        self.session: Optional[DecodeSession] = None
        self.fixed_kv_cache_size: Optional[int] = None  # set by `distribute`: every session's cache length
        self.kv_cache_dtype: Optional[str] = None  # set by `load`/`distribute`: every session's KV-cache format
        self._generation = 0  # counts generate calls: a stream started before the latest call stops with an error
        self._session_weights: Optional[tuple] = None  # `weights_key` of the model when the session was built

    @property
    def device(self) -> torch.device:
        return self._placed_model().lm_head.weight.device

    def _placed_model(self) -> GPT:
        if self.model is None:
            raise RuntimeError(
                "the model is not placed on a device yet (LLM.load(..., distribute=None)); call llm.distribute() first"
            )
        return self.model

    # ------------------------------------------------------------------------------------------------ training
    def state_dict(self, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> dict:
        """The model's state dict (no `model.` prefix), as upstream's LLM gives it."""
        return self._placed_model().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self._placed_model().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(
        self,
        input_ids: torch.Tensor,
        target_ids: Optional[torch.Tensor] = None,
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The model's logits (B, T, V) for `input_ids` (B, T); with `target_ids` (B, T) also the loss of predicting
        target_ids[:, 1:] from logits[:, :-1] (`loss_fn(logits, targets)`, default
        `litgpt.utils.chunked_cross_entropy`, which passes over targets equal to -100)."""
        logits = self._placed_model()(input_ids)
        if target_ids is None:
            return logits
        loss_fn = chunked_cross_entropy if loss_fn is None else loss_fn
        return logits, loss_fn(logits[..., :-1, :], target_ids[..., 1:])

    def trainer_setup(self, trainer_ckpt: Optional[Union[str, Path]] = None) -> None:
        """Build the model on the CPU for a trainer to place (PyTorch Lightning's `LightningModule.setup`), replacing
        any model placed before: with `trainer_ckpt` (a Lightning checkpoint of the module holding this LLM) the
        weights of its "state_dict", whose keys lose the prefix of the attribute that held the LLM (`llm.`); else
        the checkpoint directory's weights; else (init="random") random weights (`litgpt.model.init_weights`)."""
        from litgpt.checkpoint import read_checkpoint_file
        from litgpt.model import init_weights

        self.session = None
        self.fixed_kv_cache_size = None
        self.kv_cache_dtype = None
        if trainer_ckpt is not None:
            checkpoint = read_checkpoint_file(trainer_ckpt)
            if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
                raise ValueError(f"{trainer_ckpt} has no 'state_dict' entry: pass a checkpoint a Lightning Trainer "
                                 "wrote (or leave trainer_ckpt out)")
            state_dict = checkpoint["state_dict"]
            prefix = next(iter(state_dict), "").split(".", 1)[0] + "."
            state_dict = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}
            model = GPT(self.config)
            model.load_state_dict(state_dict, strict=True)
        elif self.checkpoint_dir is not None:
            model = load_checkpoint(self.checkpoint_dir)
        else:
            model = GPT(self.config)
            init_weights(model)
        self.model = model
        self.config = model.config

    @classmethod
    def load(
        cls,
        model: Union[str, Path],
        init: Optional[Literal["pretrained", "random"]] = "pretrained",
        tokenizer_dir: Optional[Union[str, Path]] = None,
        access_token: Optional[str] = None,
        distribute: Optional[Literal["auto"]] = "auto",
        *,
        device: Optional[Union[str, torch.device]] = "auto",
        precision: Optional[str] = None,
        prompt_style: Optional[str] = None,
        kv_cache_dtype: Optional[str] = None,
    ) -> "LLM":
        """Load a checkpoint directory (lit_model.pth, model_config.yaml, tokenizer files), or the hub id ORG/NAME
        of a model `litgpt download ORG/NAME` put in checkpoints/ORG/NAME; or build a named config.

        init: "pretrained" loads the checkpoint `model`; "random" builds `Config.from_name(model)` with random
        weights (`litgpt.model.init_weights`) and needs `tokenizer_dir`. tokenizer_dir: a directory (or a downloaded
        hub id) with tokenizer files to use instead of the checkpoint's. A hub id ORG/NAME found neither as a path
        nor in checkpoints/ORG/NAME is downloaded and converted there first (`litgpt download`), with access_token
        (default: $HF_TOKEN) for gated repositories. distribute: "auto"
        places the model on `device` now; None leaves it unplaced (`llm.model` is None) until `llm.distribute(...)`.
        device: "auto" (CUDA when available), "cpu", "cuda"...; precision: 32-true, bf16-true, 16-true, 64-true
        (default bf16 on CUDA, else float32); prompt_style: a name from `litgpt.prompts.prompt_styles`;
        kv_cache_dtype: the KV cache's format when the model is placed now (with distribute=None, pass it to
        `distribute`): None (the model's dtype) or "fp8_e4m3" (e4m3 values with float32 scales, `litgpt.kv_cache`).
        """
        if init not in ("pretrained", "random"):
            raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
        if distribute not in ("auto", None):
            raise ValueError(f"distribute must be 'auto' or None (then call llm.distribute(...)), got {distribute!r}")
        if distribute is None and (device != "auto" or precision is not None or kv_cache_dtype is not None):
            raise ValueError("with distribute=None pass the device and precision to llm.distribute(accelerator=..., "
                             "precision=...), and kv_cache_dtype too, not to LLM.load")
        check_kv_cache_dtype(kv_cache_dtype)
        if tokenizer_dir is not None:
            tokenizer_dir = resolve_checkpoint_dir(tokenizer_dir, option="tokenizer_dir")
        if init == "random":
            if tokenizer_dir is None:
                raise ValueError(f"init='random' builds {str(model)!r} with no checkpoint to read a tokenizer from; "
                                 "pass tokenizer_dir=DIR holding tokenizer.json or tokenizer.model")
            config = Config.from_name(str(model))
            tokenizer = Tokenizer(tokenizer_dir)
            style = load_prompt_style(tokenizer_dir, prompt_style)
            llm = cls(None, tokenizer, style, None, config)
            if distribute == "auto":
                llm.distribute(accelerator=device, precision=precision, kv_cache_dtype=kv_cache_dtype)
            return llm
        if is_repo_id(str(model)) and not Path(model).exists() and not (CHECKPOINTS_ROOT / str(model)).is_dir():
            from litgpt.scripts.download import download

            download(str(model), checkpoint_dir=CHECKPOINTS_ROOT, access_token=access_token)
        checkpoint_dir = resolve_checkpoint_dir(model, option=None)  # ORG/NAME: checkpoints/ORG/NAME
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
        if distribute == "auto":
            device = resolve_device(device)
            start_warm_up(device)  # the CUDA context and Triton's key, made while the tokenizer and the weights load
        # fails fast, before the weights load, when the files are missing
        tokenizer = Tokenizer(checkpoint_dir if tokenizer_dir is None else tokenizer_dir)
        style = load_prompt_style(checkpoint_dir, prompt_style)
        if distribute is None:
            return cls(None, tokenizer, style, checkpoint_dir, Config.from_checkpoint(checkpoint_dir))
        loaded = load_checkpoint(checkpoint_dir, device=device, dtype=resolve_dtype(precision, device))
        llm = cls(loaded, tokenizer, style, checkpoint_dir)
        llm.kv_cache_dtype = kv_cache_dtype
        return llm

    def distribute(
        self,
        accelerator: Union[str, torch.device] = "auto",
        devices: Union[int, Literal["auto"]] = "auto",
        precision: Optional[str] = None,
        quantize: Optional[str] = None,
        generate_strategy: Optional[Literal["sequential", "tensor_parallel"]] = None,
        fixed_kv_cache_size: Optional[Union[int, Literal["max_model_supported"]]] = None,
        kv_cache_dtype: Optional[str] = None,
    ) -> None:
        """Place the model on one device: load the checkpoint's weights there (or build random ones for
        init="random"), replacing any model placed before.

        accelerator: "auto" (CUDA when available), "cpu", "cuda" ("gpu" is "cuda"), or a torch device;
        devices: 1 or "auto" (one device); precision: as in `LLM.load`;
        fixed_kv_cache_size: None sizes each generation's KV cache to it; an int or "max_model_supported" (the
        model's max_seq_length) fixes the cache at that many positions for every generation, so prompt +
        max_new_tokens must fit in it. quantize: "bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq" or "bnb.int8"
        loads the weights, then swaps the linear layers for bitsandbytes' quantized ones
        (`litgpt.quantize.quantize_linears`); such a model decodes on its own modules, unfolded. generate_strategy
        ("sequential", "tensor_parallel") is refused: decoding runs on one device. kv_cache_dtype: every
        generation's KV-cache format, None (the model's dtype) or "fp8_e4m3" (e4m3 values with float32 scales,
        `litgpt.kv_cache`).
        """
        check_inference_quantize(quantize)
        check_kv_cache_dtype(kv_cache_dtype)
        if generate_strategy is not None:
            raise ValueError(f"generate_strategy={generate_strategy!r} is not supported: the LLM decodes on one "
                             "device; leave generate_strategy=None")
        if isinstance(devices, bool) or devices not in (1, "auto"):
            raise ValueError(f"devices={devices!r}: the LLM runs on one device; pass devices=1 or 'auto'")
        cache = fixed_kv_cache_size
        if cache is not None and cache != "max_model_supported" and (
                isinstance(cache, bool) or not isinstance(cache, int) or cache < 1):
            raise ValueError(f"fixed_kv_cache_size must be a positive int, 'max_model_supported' or None, got {cache!r}")
        if isinstance(cache, int) and cache > self.config.block_size:
            raise ValueError(f"fixed_kv_cache_size {cache} exceeds the model's context of {self.config.block_size} "
                             "tokens; pass at most that, or 'max_model_supported'")
        device = resolve_device("cuda" if accelerator == "gpu" else accelerator)
        dtype = resolve_dtype(precision, device)
        self.session = None  # the old model's session (and its cache) goes before the new weights come
        if self.checkpoint_dir is not None:
            start_warm_up(device)
            # quantized: loaded on the CPU (memory-mapped), each linear quantized on its way to the device
            model = load_checkpoint(self.checkpoint_dir, device="cpu" if quantize else device, dtype=dtype)
        else:
            from litgpt.model import init_weights

            with torch.device(device):
                model = GPT(self.config)
            init_weights(model)
            model = model.to(dtype=dtype)
        if quantize is not None:
            quantize_linears(model, quantize, device=device)
        self.model = model.eval()
        self.config = model.config
        self.fixed_kv_cache_size = model.max_seq_length if cache == "max_model_supported" else cache
        self.kv_cache_dtype = kv_cache_dtype

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
        *,
        stream: bool = False,
        return_as_token_ids: bool = False,
        sys_prompt: Optional[str] = None,
    ) -> Union[str, list[str], Iterator[str], torch.Tensor, list[torch.Tensor]]:
        """The continuation of `prompt` (a str), or of each prompt of a list (batched, any lengths).

        temperature 0 is greedy. Each row stops at the tokenizer's EOS (or the prompt style's stop tokens).
        compile: None chooses the decode mode by length (`litgpt.generate.session.decode_mode`), True compiles the
        decode step, False does not.
        stream: True returns an iterator over the pieces of text of one prompt, each yielded as soon as it is
        decoded (tokens are decoded only as the iterator is advanced; the pieces join to what `generate` returns).
        A later `generate` call reuses the KV cache: an unfinished iterator then raises RuntimeError.
        return_as_token_ids: the new token ids (a 1-D int64 tensor on the CPU, per prompt) instead of their text,
        cut before the stop sequence as the text is; not with stream=True, which streams text.
        sys_prompt: a system message before each prompt, for a prompt style with a system turn (a checkpoint's chat
        template); other styles refuse it.
        """
        if stream:
            if not isinstance(prompt, str):
                raise ValueError("stream=True streams one prompt: pass a str, not a list")
            if return_as_token_ids:
                raise ValueError("stream=True streams text; for token ids call generate(..., return_as_token_ids=True) "
                                 "without stream")
            return self._stream(prompt, max_new_tokens, temperature, top_k, top_p, seed, compile, sys_prompt=sys_prompt)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        rows, _ = self._generate_rows(prompts, max_new_tokens, temperature, top_k, top_p, seed, compile,
                                      sys_prompt=sys_prompt)
        out = [torch.tensor(r, dtype=torch.int64) for r in rows] if return_as_token_ids else [
            self.tokenizer.decode(r) for r in rows]
        return out[0] if isinstance(prompt, str) else out

    def _stream(
        self, prompt: str, max_new_tokens: int = 50, temperature: float = 1.0, top_k: Optional[int] = None,
        top_p: float = 1.0, seed: int = 1234, compile: Optional[bool] = None, stats: Optional[dict] = None,
        sys_prompt: Optional[str] = None,
    ) -> Iterator[str]:
        """The pieces of `prompt`'s continuation as they are decoded: the session's token stream through
        `stream_pieces`. Arguments are checked and the session made now; decoding happens as the iterator is
        advanced. `stats`, when given, gets "new_tokens" and "time_to_first_token_s" once the stream ends."""
        params = SamplingParams(temperature, top_k, top_p)
        prompt_ids = self.encode_prompts([prompt], sys_prompt)
        cache_len = check_lengths(self._placed_model(), [len(prompt_ids[0])], max_new_tokens)
        session = self.decode_session(1, cache_len, params, decode_mode(self.device, max_new_tokens, compile))
        session.seed(seed)
        self._generation += 1
        generation = self._generation
        pieces = stream_pieces(
            session.tokens(prompt_ids, max_new_tokens), self.tokenizer, self.prompt_style.stop_tokens(self.tokenizer)
        )

        def checked() -> Iterator[str]:
            while True:
                if self._generation != generation or self.session is not session:
                    raise RuntimeError("this stream's KV cache was taken by a later generate call; consume a stream "
                                       "before generating again")
                try:
                    piece = next(pieces)
                except StopIteration as done:
                    kept, _, ttft = done.value
                    if stats is not None:
                        stats.update(new_tokens=len(kept), time_to_first_token_s=ttft)
                    return
                yield piece

        return checked()

    def frame(self, prompt: str, sys_prompt: Optional[str] = None) -> str:
        """The text the model reads for `prompt`: the prompt style applied, after a system turn with `sys_prompt`
        (only a style that renders conversations, a chat template, has one)."""
        if sys_prompt is None:
            return self.prompt_style.apply(prompt)
        if not hasattr(self.prompt_style, "render"):
            raise ValueError(f"sys_prompt needs a prompt style with a system turn (a checkpoint's chat template); "
                             f"the {self.prompt_style.name!r} style has none")
        return self.prompt_style.render([{"role": "system", "content": sys_prompt}, {"role": "user", "content": prompt}])

    def encode_prompts(self, prompts: list[str], sys_prompt: Optional[str] = None) -> list[torch.Tensor]:
        model = self._placed_model()
        if self.tokenizer is None:
            raise ValueError("this LLM has no tokenizer; load one with LLM.load(checkpoint_dir)")
        if not prompts:
            raise ValueError("no prompts given; pass a string or a non-empty list of strings")
        tk = self.tokenizer
        bos = prompt_uses_bos(tk, self.prompt_style)
        encoded = []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt:
                raise ValueError(f"prompt {i} is empty; every prompt needs some text")
            encoded.append(tk.encode(self.frame(prompt, sys_prompt), bos=bos))
        vocab = model.config.padded_vocab_size
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
        rows, stats = self._generate_rows(prompts, max_new_tokens, temperature, top_k, top_p, seed, compile, stream,
                                          kernels)
        return [self.tokenizer.decode(r) for r in rows], stats

    def _generate_rows(
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
        sys_prompt: Optional[str] = None,
    ) -> tuple[list[list[int]], dict]:
        """`generate_with_stats` with each prompt's new token ids (cut before the stop sequence) for its texts."""
        params = SamplingParams(temperature, top_k, top_p)
        prompt_ids = self.encode_prompts(prompts, sys_prompt)
        cache_len = check_lengths(self._placed_model(), [len(p) for p in prompt_ids], max_new_tokens)
        mode = decode_mode(self.device, max_new_tokens, compile, len(prompts))
        self._generation += 1
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
            stream.write(self.frame(prompts[0], sys_prompt))
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
        return rows, stats

    def decode_session(
        self, batch_size: int, cache_len: int, params: SamplingParams, mode: str, kernels: bool = True
    ) -> DecodeSession:
        """The session for this batch: the last one when it serves (captured and compiled steps are kept), else a
        new one. Captured and compiled steps get a cache of the whole context, so that later calls fit in it; with
        `fixed_kv_cache_size` (see `distribute`) every session gets a cache of that many positions. A session is
        also rebuilt when the model's weights changed since it was built (a training step, an in-place edit, a
        load): its folded decode weights are a snapshot of them. The model is put in eval mode (no dropout)."""
        model = self._placed_model().eval()
        if self.fixed_kv_cache_size is not None:
            if cache_len > self.fixed_kv_cache_size:
                raise ValueError(
                    f"prompt + max_new_tokens = {cache_len} tokens exceeds the fixed KV cache of "
                    f"{self.fixed_kv_cache_size} positions (distribute(fixed_kv_cache_size=...)); shorten the prompt, "
                    "lower max_new_tokens or distribute again with a larger cache"
                )
            cache_len = self.fixed_kv_cache_size
        elif mode != "eager":
            cache_len = model.max_seq_length
        if (self.session is None
                or not self.session.matches(batch_size, cache_len, params, mode, kernels, self.kv_cache_dtype)
                or self._session_weights != weights_key(model)):
            self.session = None  # drop the old step (and its graph) before building the new cache
            # quantized weights cannot be folded: such a model decodes on its own modules
            self.session = DecodeSession(model, batch_size, cache_len, params, mode, kernels,
                                         fold=not has_quantized_weights(model), kv_cache_dtype=self.kv_cache_dtype)
            self._session_weights = weights_key(model)  # after the build, which may merge LoRA weights in place
        return self.session

    # ------------------------------------------------------------------------------------------------ saving
    def save(self, out_dir: Union[str, Path], prompt_style: Optional[PromptStyle] = None) -> None:
        """Write a checkpoint `LLM.load(out_dir)` reads back: lit_model.pth (the model's current weights),
        model_config.yaml, the tokenizer files and, unless the style is `default`, prompt_style.yaml (`prompt_style`,
        else the LLM's own).

        The directory is written beside `out_dir` and renamed onto it (`litgpt.utils.atomic_directory`): a reader
        or a kill sees the old directory or the complete new one. An existing `out_dir` may hold only checkpoint
        files (`CHECKPOINT_FILES`), which are replaced; anything else there is refused, not deleted.
        """
        from litgpt.lora import has_unmerged_lora

        model = self._placed_model()
        if has_unmerged_lora(model):
            raise ValueError("the model has unmerged LoRA layers, which a plain checkpoint cannot hold; call "
                             "litgpt.lora.merge_lora_weights(llm.model) before llm.save")
        if self.tokenizer is None:
            raise ValueError("this LLM has no tokenizer (LLM.from_config), so its checkpoint would not load; save "
                             "the weights with litgpt.checkpoint.save_checkpoint(llm.model, out_dir)")
        out_dir = Path(out_dir)
        if out_dir.exists():
            if not out_dir.is_dir():
                raise ValueError(f"out_dir {str(out_dir)!r} is a file; pass a directory")
            others = sorted(p.name for p in out_dir.iterdir() if p.name not in CHECKPOINT_FILES)
            if others:
                raise ValueError(f"out_dir {str(out_dir)!r} holds files a checkpoint does not ({', '.join(others[:5])}"
                                 f"{' ...' if len(others) > 5 else ''}), which saving would delete; pass a new or "
                                 "empty directory")
        style = prompt_style or self.prompt_style
        config = model.config
        if type(config) is not Config:  # a subclass (litgpt.lora.Config): only the model's own fields are saved
            config = Config.from_dict({f.name: getattr(config, f.name) for f in dataclasses.fields(Config)})
        with atomic_directory(out_dir) as tmp:
            torch.save(model.state_dict(), tmp / "lit_model.pth")
            config.save(tmp / "model_config.yaml")
            self.tokenizer.save(tmp)
            if style.name != "default":
                style.save(tmp)

    # ------------------------------------------------------------------------------------------------ benchmark
    def benchmark(self, num_iterations: Optional[int] = None, **kwargs: Any) -> Union[tuple[str, dict], dict]:
        """Two benchmarks, told apart by `prompt`:

        `llm.benchmark(num_iterations=1, prompt=..., **generate_kwargs)` times `num_iterations` calls of
        `generate(prompt, **generate_kwargs)` (`stream=True` times the streamed pieces, as they are consumed) and
        returns (the last call's text, {key: one value per call}) with upstream litgpt's keys: "Seconds total",
        "Seconds to first token", "Tokens generated" (the new tokens, up to the stop), "Inference speed in
        tokens/sec" (tokens generated / seconds total) and, on CUDA, "Total GPU memory allocated in GB" (the peak
        allocated during the call, in 1e9 bytes).

        Without `prompt`, `llm.benchmark(batch_size=..., context_length=..., ...)` is `benchmark_decode`: decode
        speed at a nearly full cache.
        """
        if "prompt" not in kwargs:
            if num_iterations is not None:
                raise ValueError("benchmark(num_iterations=...) times generate and needs prompt=...; without a prompt "
                                 "it is the decode benchmark, which takes keyword arguments (see benchmark_decode)")
            return self.benchmark_decode(**kwargs)
        num_iterations = 1 if num_iterations is None else num_iterations
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
            raise ValueError(f"num_iterations must be a positive int, got {num_iterations!r}")
        prompt = kwargs.pop("prompt")
        if not isinstance(prompt, str):
            raise ValueError("benchmark times one prompt: pass prompt= a str")
        stream = kwargs.pop("stream", False)
        cuda = self.device.type == "cuda"
        results: dict[str, list] = {key: [] for key in BENCHMARK_KEYS if cuda or "GPU" not in key}
        text = ""
        for _ in range(num_iterations):
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            if stream:
                stats: dict = {}
                pieces, first = [], None
                t0 = time.perf_counter()
                for piece in self._stream(prompt, stats=stats, **kwargs):
                    first = time.perf_counter() - t0 if first is None else first
                    pieces.append(piece)
                total = time.perf_counter() - t0
                text = "".join(pieces)
                if first is not None:  # as the consumer sees it: from the call to the first piece
                    stats["time_to_first_token_s"] = first
            else:
                t0 = time.perf_counter()
                rows, stats = self._generate_rows([prompt], **kwargs)
                total = time.perf_counter() - t0
                text = self.tokenizer.decode(rows[0])
            results["Seconds total"].append(total)
            results["Seconds to first token"].append(stats["time_to_first_token_s"])
            results["Tokens generated"].append(stats["new_tokens"])
            results["Inference speed in tokens/sec"].append(stats["new_tokens"] / total)
            if cuda:
                results["Total GPU memory allocated in GB"].append(torch.cuda.max_memory_allocated(self.device) / 1e9)
        return text, results

    def benchmark_decode(
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
            self._placed_model(), batch_size, context_length, decode_steps, warmup, mode,
            SamplingParams(temperature, top_k), kv_cache_dtype=self.kv_cache_dtype,
        )

    @classmethod
    def from_config(
        cls, config: Union[str, Config], device: Optional[Union[str, torch.device]] = "auto",
        precision: Optional[str] = None, kv_cache_dtype: Optional[str] = None,
    ) -> "LLM":
        """A randomly initialised model with no tokenizer (for `benchmark`): a config or a named config; kv_cache_dtype
        as in `distribute`."""
        from litgpt.model import init_weights

        check_kv_cache_dtype(kv_cache_dtype)
        config = Config.from_name(config) if isinstance(config, str) else config
        device = resolve_device(device)
        with torch.device(device):
            model = GPT(config)
        init_weights(model)
        llm = cls(model.to(dtype=resolve_dtype(precision, device)))
        llm.kv_cache_dtype = kv_cache_dtype
        return llm


def benchmark_dict_to_markdown_table(data: dict[str, list]) -> str:
    """A markdown table of `LLM.benchmark`'s results: one row per key with the mean and the sample standard
    deviation of its values (0 for a single value; values that are None are left out, and a key with none shows
    n/a)."""
    lines = ["| Metric | Mean | Std Dev |", "|---|---|---|"]
    for key, values in data.items():
        values = [v for v in values if v is not None]
        if not values:
            lines.append(f"| {key} | n/a | n/a |")
            continue
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {key} | {statistics.fmean(values):.2f} | {std:.2f} |")
    return "\n".join(lines)


def weights_key(model: torch.nn.Module) -> tuple:
    """Identifies the current values of the model's parameters: each one's storage address and version counter
    (which every in-place change, an optimizer step included, bumps). Equal keys: nothing was written since."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())

