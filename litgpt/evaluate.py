"""`litgpt evaluate`: score a checkpoint on lm-evaluation-harness tasks with our `GPT` behind lm-eval's `LM` interface.

No conversion to a Hugging Face model is made, so every model we load is scored as it is: MHA/GQA/MQA, MLA, MLA-o,
mixture of experts, a LoRA fine-tune (its `final/` directory holds the merged weights; an unmerged LoRA model in
memory is merged first).

    litgpt evaluate out/pretrain/debug/final --tasks my_task --include_path config_hub/evaluate

`GPTLM` answers lm-eval's three kinds of request:
- `loglikelihood`: (context, continuation) pairs, sorted longest first and batched (`lm_eval.models.utils.Collator`,
  which also scores continuations that share all but their last token from one row); the LM head maps only the
  continuation's positions, and their log-softmax is taken in float32 one request at a time (never for the whole
  batch).
- `loglikelihood_rolling`: a document's log-likelihood over lm-eval's disjoint rolling windows of the model's context
  (`lm_eval.utils.get_rolling_token_windows`), all documents' windows batched together.
- `generate_until`: the decode session `LLM.generate` uses (greedy unless the task samples), ended at the stop
  strings or the tokenizer's stop ids.

With `cache_chunk` (`--cache_chunk N`) both log-likelihood kinds are scored through the KV cache instead of by a
plain forward: each batch is written into a fresh cache in the LLM's `kv_cache_dtype` (`--kv_cache_dtype
fp8_e4m3`, else the model's dtype) N tokens at a time, each chunk a prefill over the cached prefix
(`litgpt.generate.scoring`), so the scores show what the cache format costs. A plain forward never reads the cache,
so an fp8 cache without `cache_chunk` is refused for them.

Tasks are lm-eval's, by name, or the user's own task YAMLs in `--include_path` (a task whose data is a local file,
`dataset_path: json` with `data_files`, needs no hub access). Results go to `--out_dir` as lm-eval's results JSON
(`results.json`) and its markdown table (`results.md`), which is also printed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from litgpt.api import LLM
from litgpt.generate.base import SamplingParams, check_lengths, head_at
from litgpt.generate.scoring import check_cache_chunk, logits_through_cache
from litgpt.generate.session import decode_mode
from litgpt.kv_cache import check_kv_cache_dtype
from litgpt.lora import merge_for_decoding
from litgpt.model import GPT
from litgpt.files import atomic_write

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

# generation settings a task may ask for that the decode session honours (normalize_gen_kwargs adds do_sample)
GENERATION_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
STOP_CHECK_EVERY = 8  # generated tokens between looks for the stop strings (each look reads the tokens on the host)

# (context tokens, continuation tokens) with the request's strings (None for rolling windows)
TokenRequest = tuple[Optional[tuple[str, str]], list[int], list[int]]


class GPTLM(TemplateLM):
    """lm-eval's `LM` over an `LLM` (our model and tokenizer): the three request kinds, batched.

    batch_size: rows per forward pass (and per generation batch). max_length: the longest input of a forward pass
    (default: the model's block_size); longer inputs keep their last max_length tokens, as lm-eval's HF model does.
    max_gen_toks: new tokens per generation unless the task sets its own. seed: the seed of sampled generations.
    cache_chunk: score log-likelihoods through a KV cache in the LLM's kv_cache_dtype, written this many tokens at a
    time (`litgpt.generate.scoring.logits_through_cache`); None: by the plain forward, which an LLM with an fp8
    kv_cache_dtype refuses for log-likelihoods (it would not read the cache).
    """

    def __init__(
        self,
        llm: LLM,
        batch_size: int = 1,
        max_length: Optional[int] = None,
        max_gen_toks: int = 256,
        seed: int = 1234,
        cache_chunk: Optional[int] = None,
    ) -> None:
        super().__init__()
        if llm.model is None:
            raise ValueError("the LLM's model is not placed on a device yet; call llm.distribute() first")
        if llm.tokenizer is None:
            raise ValueError("the LLM has no tokenizer; load it with LLM.load(checkpoint_dir)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        block_size = llm.model.config.block_size
        max_length = block_size if max_length is None else max_length
        if not 1 <= max_length <= block_size:
            raise ValueError(f"max_length must be within 1..{block_size} (the model's block_size), got {max_length}")
        if max_gen_toks < 1:
            raise ValueError(f"max_gen_toks must be >= 1, got {max_gen_toks}")
        if cache_chunk is not None:
            check_cache_chunk(cache_chunk)
        merge_for_decoding(llm.model, "GPTLM")  # scoring and decoding read the merged weights
        llm.model.eval()
        if llm.model.max_seq_length < max_length:
            llm.model.max_seq_length = max_length
        self.llm = llm
        self.tokenizer = llm.tokenizer
        self._batch_size = batch_size
        self._max_length = max_length
        self._max_gen_toks = max_gen_toks
        self.seed = seed
        self.cache_chunk = cache_chunk

    # ------------------------------------------------------------------------------------------- properties
    @property
    def model(self) -> GPT:
        return self.llm.model

    @property
    def device(self) -> torch.device:
        return self.llm.device

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def eot_token_id(self) -> int:
        if self.tokenizer.eos_id is None:
            raise ValueError(f"the tokenizer in {self.tokenizer.checkpoint_dir} has no EOS token, which lm-eval "
                             "needs to end generations and to condition the first token of a document on")
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is: BOS, else EOS (as lm-eval's Hugging Face model)."""
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return f"litgpt-{self.tokenizer.fingerprint[:16]}"

    # ------------------------------------------------------------------------------------------- tokens
    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        """Token ids of `string`. add_special_tokens None frames it as the tokenizer's configuration does
        (`Tokenizer.add_bos`/`add_eos`, what `transformers` adds), unless it already starts with the BOS text;
        True frames it with BOS (where the tokenizer has one); False adds nothing."""
        tk = self.tokenizer
        if add_special_tokens is None:
            bos_text = tk.decode([self.prefix_token_id]) if tk.bos_id is not None else None
            framed = not (bos_text and string.startswith(bos_text))
            return tk.encode(string, bos=framed and tk.add_bos, eos=framed and tk.add_eos).tolist()
        return tk.encode(string, bos=add_special_tokens and tk.bos_id is not None).tolist()

    def tok_decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split (the context's trailing spaces moved to the continuation, the pair encoded whole and the
        context's tokens cut off the front), except where the tokenizer merges across the boundary (`def main(` +
        `):` as one token): then the whole encoding does not start with the context's tokens, or leaves the
        continuation no token of its own, and the continuation is encoded apart (without special tokens), so its
        own text is scored."""
        cut = len(context.rstrip())
        context, continuation = context[:cut], context[cut:] + continuation
        context_enc, whole_enc = self.tok_encode(context), self.tok_encode(context + continuation)
        if len(whole_enc) > len(context_enc) and whole_enc[: len(context_enc)] == context_enc:
            return context_enc, whole_enc[len(context_enc):]
        return context_enc, self.tok_encode(continuation, add_special_tokens=False)

    # ------------------------------------------------------------------------------------------- scoring
    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(log-probability of the continuation, whether greedy decoding gives it) for each request, computed in
        batches of `batch_size` rows sorted longest first; one row serves every request whose context +
        continuation[:-1] is the same (a multiple-choice question's one-token answers). The host reads a batch's
        answers once, after the batch."""
        if self.cache_chunk is None and self.llm.kv_cache_dtype is not None:
            raise ValueError(f"kv_cache_dtype {self.llm.kv_cache_dtype!r} is not read by log-likelihood scores "
                             "without cache_chunk (a plain forward reads no cache); pass cache_chunk (--cache_chunk N)")
        order = Collator(
            requests,
            sort_fn=lambda req: (-len(req[1] + req[2]), tuple(req[1] + req[2])),
            group_by="contexts",
            group_fn=lambda req: req[1] + req[2][:-1],
        )
        results: list[tuple[float, bool]] = []
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests")
        for chunk in order.get_batched(n=self.batch_size):
            answered, logprobs, greedy = [], [], []
            for (strings, context, continuation), (logits, lse) in zip(chunk, self._continuation_logits(chunk)):
                argmax = logits.argmax(dim=-1)  # (C,)
                # this row's request and those differing from it only in the last continuation token
                for request, tokens, row_logits in order.get_cache(
                    req_str=strings, cxt_toks=context, cont_toks=continuation, logits=logits[None]
                ):
                    c = len(tokens)
                    target = torch.tensor(tokens, dtype=torch.int64, device=logits.device)  # (c,)
                    picked = row_logits[0, -c:].gather(1, target[:, None])[:, 0].float()  # (c,): the trailing rows
                    logprobs.append((picked - lse[-c:]).sum())
                    greedy.append((argmax[-c:] == target).all())
                    answered.append(request)
            for request, logprob, is_greedy in zip(answered, torch.stack(logprobs).tolist(),
                                                   torch.stack(greedy).tolist()):
                results.append((logprob, is_greedy))
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, (logprob, is_greedy))
            progress.update(len(answered))
        progress.close()
        return order.get_original(results)

    @torch.inference_mode()
    def _continuation_logits(self, chunk: list[TokenRequest]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per request of the batch, the logits (C, V) at the positions that predict its C continuation tokens and
        their log-sum-exp (C,) in float32 (a log-probability is a logit minus it). The rows are context +
        continuation without the last token, cut to the last max_length tokens and right-padded; the LM head maps
        only the continuation's positions (`head_at`), and float32 is taken one request at a time. With cache_chunk
        the rows go through a KV cache in chunks of that many tokens (`logits_through_cache`)."""
        inputs, spans = [], []
        for _, context, continuation in chunk:
            if not context or not continuation:
                raise ValueError("a loglikelihood request needs a non-empty context and continuation")
            if len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens exceeds max_length {self.max_length}")
            row = (context + continuation)[-(self.max_length + 1):][:-1]
            inputs.append(row)
            spans.append((len(row) - len(continuation), len(row)))
        idx = torch.zeros(len(inputs), max(len(r) for r in inputs), dtype=torch.int64)  # (B, T), right-padded
        for i, row in enumerate(inputs):
            idx[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        rows = torch.cat([torch.full((end - start,), i) for i, (start, end) in enumerate(spans)])  # (N,)
        cols = torch.cat([torch.arange(start, end) for start, end in spans])  # (N,)
        device = self.device
        if self.cache_chunk is not None:
            self.llm.session = None  # its cache is replaced by the scoring cache (and rebuilt by the next generation)
            logits = logits_through_cache(self.model, idx, rows, cols, self.cache_chunk,
                                          self.llm.kv_cache_dtype)  # (N, V), in the model's dtype
        else:
            with head_at(self.model, rows.to(device), cols.to(device)):
                logits = self.model(idx.to(device))  # (N, V): the continuation positions only, in the model's dtype
        per_request = logits.split([end - start for start, end in spans])  # (C, V) each
        return [(row_logits, torch.logsumexp(row_logits.float(), dim=-1)) for row_logits in per_request]

    def loglikelihood_rolling(self, requests: list["Instance"], disable_tqdm: bool = False) -> list[float]:
        """Each document's log-likelihood, every token predicted once: lm-eval's disjoint rolling windows of at most
        max_length tokens, the first conditioned on the prefix token (BOS, else EOS), all documents' windows scored
        together in length-sorted batches."""
        windows: list[TokenRequest] = []
        owners: list[int] = []
        for i, (text,) in enumerate(tqdm([r.args for r in requests], disable=disable_tqdm, desc="Tokenizing")):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1,
            )):
                windows.append((None, context, continuation))
                owners.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ------------------------------------------------------------------------------------------- generation
    def generate_until(self, requests: list["Instance"], disable_tqdm: bool = False) -> list[str]:
        """Each context's continuation from our decode session, in batches of requests with the same settings,
        longest first: greedy (or sampled where the task says do_sample), cut before the first stop string (the
        task's `until` and the EOS text) and ended at the tokenizer's stop ids."""
        order = Collator(
            [r.args for r in requests],
            sort_fn=lambda req: (-len(self.tok_encode(req[0])), req[0]),
            group_by="gen_kwargs",
            group_fn=lambda req: req[1],
        )
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        results: list[str] = []
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests")
        for chunk in order.get_batched(n=self.batch_size):
            contexts, settings = zip(*chunk)
            texts = self._generate(list(contexts), settings[0], eos_text)
            for context, text in zip(contexts, texts):
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, settings[0]), text)
                progress.update(1)
        progress.close()
        return order.get_original(results)

    def _generate(self, contexts: list[str], gen_kwargs: dict, eos_text: str) -> list[str]:
        """The continuations of one batch of contexts with the same generation settings."""
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"generation settings must be a mapping, got {gen_kwargs!r}")
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        unknown = sorted(set(kwargs) - set(GENERATION_KEYS))
        if unknown:
            raise ValueError(f"generation settings {unknown} are not supported by litgpt evaluate; a task may set "
                             f"{', '.join(GENERATION_KEYS)}")
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
        max_new = kwargs["max_gen_toks"]
        if max_new >= self.max_length:
            raise ValueError(f"max_gen_toks {max_new} leaves no room for a context in max_length {self.max_length}")
        params = SamplingParams(0.0)  # greedy
        if kwargs["do_sample"]:
            params = SamplingParams(kwargs.get("temperature", 1.0), kwargs.get("top_k"), kwargs.get("top_p", 1.0))
        keep = self.max_length - max_new  # the contexts' last tokens that leave room for the generation
        # an empty context is the prefix token alone, as for a loglikelihood request
        prompts = [torch.tensor(self.tok_encode(c)[-keep:] or [self.prefix_token_id], dtype=torch.int64)
                   for c in contexts]
        rows = self.generate_ids(prompts, max_new, params, until)
        return [postprocess_generated_text(self.tok_decode(ids), until, None) for ids in rows]

    @torch.inference_mode()
    def generate_ids(
        self, prompts: list[torch.Tensor], max_new_tokens: int, params: SamplingParams, until: list[str] = ()
    ) -> list[list[int]]:
        """Each prompt's new ids, cut before the first of the tokenizer's stop ids, from the `LLM`'s decode session;
        decoding ends early once every row has a stop id or (looked for every STOP_CHECK_EVERY tokens) one of the
        `until` strings in its text."""
        model = self.model
        cache_len = check_lengths(model, [len(p) for p in prompts], max_new_tokens)
        mode = decode_mode(self.device, max_new_tokens, None, len(prompts))
        session = self.llm.decode_session(len(prompts), cache_len, params, mode)
        session.seed(self.seed)
        stop_ids = set(self.tokenizer.stop_ids)
        pending: list[torch.Tensor] = []
        rows: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for n, token in enumerate(session.tokens(prompts, max_new_tokens), start=1):  # token: (B, 1)
            pending.append(token)
            if n % STOP_CHECK_EVERY and n < max_new_tokens:
                continue
            new = torch.cat(pending, dim=1).tolist()  # (B, k) on the host
            pending = []
            for i, ids in enumerate(new):
                if done[i]:
                    continue
                rows[i] += ids
                stops = [j for j, t in enumerate(rows[i]) if t in stop_ids]
                if stops:
                    rows[i], done[i] = rows[i][: stops[0]], True
                elif until and any(s and s in self.tok_decode(rows[i]) for s in until):
                    done[i] = True
            if all(done):
                break
        return rows


# ------------------------------------------------------------------------------------------------ tasks
@functools.lru_cache(maxsize=4)
def task_manager(include_path: Optional[str], include_defaults: bool) -> "TaskManager":
    """lm-eval's task index over `include_path` and, with include_defaults, its own task YAMLs (indexing those takes
    seconds, so an index is built once per process: `litgpt compare` evaluates every model on the same one)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def _index_for(names: list[str], include_path: Optional[Path]) -> "TaskManager":
    """The index that has every task of `names`: the --include_path folder alone when its YAMLs (or YAML paths)
    name them all, else lm-eval's own tasks too."""
    path = None if include_path is None else str(include_path)
    if path is not None:
        local = task_manager(path, False)
        if all(_known(local, name) for name in names):
            return local
    return task_manager(path, True)


def _known(manager: "TaskManager", name: str) -> bool:
    return name in manager.task_index or (name.endswith((".yaml", ".yml")) and Path(name).is_file())


def load_tasks(names: list[str], include_path: Optional[Path] = None) -> tuple[list, "TaskManager"]:
    """The lm-eval tasks and groups `names` name (task, group or tag names, or task YAML paths), built with their
    data, and the index they come from. An unknown name, or a task whose data is on the Hugging Face Hub when the
    hub cannot be reached, is a one-line ValueError naming the task and the way out."""
    if include_path is not None and not Path(include_path).is_dir():
        raise FileNotFoundError(f"--include_path {str(include_path)!r} is not a directory; pass the folder that "
                                "holds your task YAMLs")
    manager = _index_for(names, include_path)
    items: list = []
    for name in names:
        if not _known(manager, name):
            close = difflib.get_close_matches(name, list(manager.task_index), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown task {name!r}{hint}; run `litgpt evaluate CHECKPOINT_DIR` without --tasks to list the "
                "task names, or pass the folder of your own task YAMLs with --include_path"
            )
        try:
            loaded = manager.load(name)
        except ConnectionError as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(
                f"task {name!r} reads its data set from the Hugging Face Hub, which cannot be reached ({reason}); "
                "run it once with network access (the data set is then cached), or write a task YAML with "
                "`dataset_path: json` and local `data_files` and pass its folder with --include_path"
            ) from e
        items += top_level(loaded)
    return items, manager


def top_level(loaded: dict) -> list:
    """The groups and tasks of a `TaskManager.load` result that are no other group's members (what was asked for)."""
    members = {child for children in loaded["group_map"].values() for child in children}
    groups = [g for name, g in loaded["groups"].items() if name not in members]
    return groups + [t for name, t in loaded["tasks"].items() if name not in members]


# ------------------------------------------------------------------------------------------------ running
@dataclasses.dataclass
class EvaluateArgs:
    """lm-eval tasks to score models on (`litgpt compare --evaluate.tasks ...`); no tasks: no evaluation.

    tasks: comma-separated task, group or tag names (lm-eval's, or your own YAMLs' in include_path).
    num_fewshot: examples in each prompt (default: the task's own). batch_size: rows per forward pass.
    limit: examples per task (a fraction of each task when below 1; default: all). include_path: a folder of task
    YAMLs of your own. seed: the seed of lm-eval's sampling of examples and of sampled generations. max_length: the
    longest input of a forward pass, and the window of perplexity tasks (default: the model's block_size).
    """

    tasks: Optional[str] = None
    num_fewshot: Optional[int] = None
    batch_size: int = 1
    limit: Optional[float] = None
    include_path: Optional[Path] = None
    seed: int = 1234
    max_length: Optional[int] = None

    def task_names(self) -> list[str]:
        names = [t.strip() for t in (self.tasks or "").split(",") if t.strip()]
        if self.tasks is not None and not names:
            raise ValueError("--tasks is empty; pass task names separated by commas (e.g. --tasks hellaswag,arc_easy)")
        return names

    def validate(self) -> None:
        self.task_names()
        if self.limit is not None and not self.limit > 0:
            raise ValueError(f"--limit must be > 0 (examples per task, or a fraction of each task below 1), got "
                             f"{self.limit:g}; leave it out to score every example")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"--num_fewshot must be >= 0, got {self.num_fewshot}")
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and (isinstance(self.max_length, bool) or self.max_length < 1):
            raise ValueError(f"--max_length must be >= 1 token, got {self.max_length}; leave it out for the model's "
                             "block_size")

    def settings(self) -> dict:
        """The settings as JSON values (what a recorded score was computed with)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def lm_eval_limit(self) -> Optional[Union[int, float]]:
        """lm-eval's limit: a count when >= 1, else a fraction."""
        if self.limit is None:
            return None
        return int(self.limit) if self.limit >= 1 else self.limit


def evaluate_llm(
    llm: LLM, args: EvaluateArgs, tasks: Optional[tuple[list, "TaskManager"]] = None, cache_chunk: Optional[int] = None,
) -> dict:
    """lm-eval's results dict (`simple_evaluate`) of `llm` on `args.tasks`; `tasks` loaded already
    (`load_tasks`) saves loading them again. cache_chunk: score log-likelihoods through the KV cache (`GPTLM`)."""
    from lm_eval.evaluator import simple_evaluate

    args.validate()
    items, manager = tasks if tasks is not None else load_tasks(args.task_names(), args.include_path)
    lm = GPTLM(llm, batch_size=args.batch_size, max_length=args.max_length, seed=args.seed, cache_chunk=cache_chunk)
    results = simple_evaluate(
        model=lm, tasks=items, task_manager=manager, num_fewshot=args.num_fewshot, limit=args.lm_eval_limit(),
        random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
        fewshot_random_seed=args.seed, log_samples=False,
    )
    return results


SCORED_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")  # the output types GPTLM scores


def output_types(items: list) -> dict[str, str]:
    """{task name: its lm-eval output type} of every task in `items` (tasks and groups, as `load_tasks` gives)."""
    tasks = [t for item in items for t in (item.get_all_tasks() if hasattr(item, "get_all_tasks") else [item])]
    return {t.config.task: t.OUTPUT_TYPE for t in tasks}


def check_cache_options(types: dict[str, str], kv_cache_dtype: Optional[str], cache_chunk: Optional[int]) -> None:
    """One-line errors for cache options that would do nothing with these tasks ({name: output type}): --cache_chunk
    where no task is scored by log-likelihood, an fp8 --kv_cache_dtype without --cache_chunk where one is."""
    scored = sorted(name for name, kind in types.items() if kind in SCORED_TYPES)
    if cache_chunk is not None and not scored:
        raise ValueError(f"--cache_chunk scores log-likelihoods through the KV cache, but tasks {sorted(types)} only "
                         "generate (which always decodes through it); leave --cache_chunk out")
    if kv_cache_dtype is not None and cache_chunk is None and scored:
        raise ValueError(f"--kv_cache_dtype {kv_cache_dtype} is not read when tasks {scored} are scored by a plain "
                         "forward; pass --cache_chunk N (e.g. 256) to score them through the KV cache")


def scores(results: dict) -> dict[str, dict[str, float]]:
    """{task or group: {metric: value}} of lm-eval's results: its `metric,filter` keys (`acc,none`,
    `acc_stderr,none`...) whose values are numbers."""
    table = {**results.get("results", {}), **results.get("groups", {})}
    return {task: {k: v for k, v in row.items() if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
            for task, row in table.items()}


def score_checkpoint(
    checkpoint_dir: Path, args: EvaluateArgs, tasks: Optional[tuple[list, "TaskManager"]] = None,
    device: str = "auto", precision: Optional[str] = None,
) -> dict:
    """{"settings": the evaluation settings, "scores": `scores` of the checkpoint's lm-eval results} (a row's entry
    in `litgpt compare`'s results)."""
    llm = LLM.load(checkpoint_dir, device=device, precision=precision)
    return {"settings": args.settings(), "scores": scores(evaluate_llm(llm, args, tasks))}


def task_score_lines(rows: list[dict]) -> list[str]:
    """A markdown section with each model's task scores (rows of `litgpt compare` with an "evaluate" entry): one
    column per task and metric, `value ± standard error` where lm-eval gives one; none when no row has scores."""
    scored = [r for r in rows if r.get("evaluate")]
    if not scored:
        return []
    columns: list[tuple[str, str]] = []
    for r in scored:
        for task, metrics in r["evaluate"]["scores"].items():
            for key in metrics:
                metric = key.split(",")[0]
                if not metric.endswith("_stderr") and (task, key) not in columns:
                    columns.append((task, key))
    settings = scored[0]["evaluate"]["settings"]
    lines = ["", "## Task scores", "",
             f"lm-eval tasks {settings['tasks']} (num_fewshot {settings['num_fewshot']}, limit {settings['limit']}, "
             f"seed {settings['seed']}), scored by `litgpt evaluate` on each model's final checkpoint; ± is lm-eval's "
             "standard error.", "",
             "| model | " + " | ".join(f"{task} {key.split(',')[0]}" for task, key in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for r in scored:
        cells = []
        for task, key in columns:
            metrics = r["evaluate"]["scores"].get(task, {})
            metric, _, filter_name = key.partition(",")
            value, stderr = metrics.get(key), metrics.get(f"{metric}_stderr,{filter_name}")
            cell = "-" if value is None else f"{value:.4f}"
            cells.append(cell if stderr is None or value is None else f"{cell} ± {stderr:.4f}")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return lines


def markdown_table(results: dict) -> str:
    """lm-eval's markdown table of the results (and of the groups, when there are any)."""
    from lm_eval.utils import make_table

    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table


def write_results(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """out_dir/results.json (lm-eval's results, as its own command line writes them) and out_dir/results.md."""
    from lm_eval.utils import handle_non_serializable

    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
    atomic_write(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    table = markdown_table(results)
    atomic_write(md_path, lambda tmp: tmp.write_text(table, encoding="utf-8"))
    return json_path, md_path


def evaluate(
    checkpoint_dir: Path,
    tasks: Optional[str] = None,
    num_fewshot: Optional[int] = None,
    batch_size: int = 1,
    limit: Optional[float] = None,
    seed: int = 1234,
    device: str = "auto",
    precision: Optional[str] = None,
    out_dir: Optional[Path] = None,
    include_path: Optional[Path] = None,
    kv_cache_dtype: Optional[str] = None,
    cache_chunk: Optional[int] = None,
    max_length: Optional[int] = None,
) -> Optional[dict]:
    """Score a checkpoint on lm-evaluation-harness tasks (our model behind lm-eval's `LM`; no conversion).

    Args:
        checkpoint_dir: a directory with lit_model.pth, model_config.yaml and tokenizer files (or a downloaded hub
            id ORG/NAME).
        tasks: comma-separated task, group or tag names: lm-eval's (`hellaswag,arc_easy`) or those of the YAMLs in
            --include_path. Left out: the task names are listed.
        num_fewshot: examples in each prompt (default: each task's own).
        batch_size: rows per forward pass and per generation batch.
        limit: examples per task (a fraction of each task when below 1); default: all.
        seed: seed of lm-eval's example and few-shot sampling, torch's and sampled generations'.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        precision: 32-true, bf16-true, 16-true, 64-true (default: bf16 on CUDA, else 32-true).
        out_dir: where results.json (lm-eval's results) and results.md (its table) go; default
            checkpoint_dir/evaluate.
        include_path: a folder of lm-eval task YAMLs of your own; a task whose data is a local file
            (`dataset_path: json` with `data_files`) runs with no hub access.
        kv_cache_dtype: the KV cache's format: null (the precision's dtype) or fp8_e4m3 (e4m3 values with float32
            scales, `litgpt.kv_cache`), for generation and, with --cache_chunk, for log-likelihood scores.
        cache_chunk: score log-likelihood and perplexity tasks through the KV cache, the text written into it this
            many tokens at a time (each chunk a prefill over the cached prefix, as chat's later turns), so the
            scores show what the cache format costs; default: a plain forward, which reads no cache.
        max_length: the longest input of a forward pass, and the window of perplexity tasks' rolling
            log-likelihoods (default: the model's block_size; e.g. the sequence length it was trained at).
    """
    args = EvaluateArgs(tasks, num_fewshot, batch_size, limit, include_path, seed, max_length)
    args.validate()
    check_kv_cache_dtype(kv_cache_dtype)
    if cache_chunk is not None:
        check_cache_chunk(cache_chunk, "--cache_chunk")
    llm = LLM.load(checkpoint_dir, distribute=None)  # the files and the tokenizer are checked before anything else
    names = args.task_names()
    if not names:
        if kv_cache_dtype is not None or cache_chunk is not None:
            raise ValueError("--kv_cache_dtype and --cache_chunk apply to scoring tasks; pass --tasks, or leave them "
                             "out to list the task names")
        manager = task_manager(None if include_path is None else str(include_path), True)
        print("\n".join(sorted(manager.all_tasks)))
        return None
    loaded = load_tasks(names, include_path)
    check_cache_options(output_types(loaded[0]), kv_cache_dtype, cache_chunk)
    llm.distribute(accelerator=device, precision=precision, kv_cache_dtype=kv_cache_dtype)
    results = evaluate_llm(llm, args, loaded, cache_chunk)
    # lm-eval's slot for how the model was built: which KV cache the scores went through (if any), its window
    results.setdefault("config", {})["model_args"] = {"kv_cache_dtype": kv_cache_dtype, "cache_chunk": cache_chunk,
                                                      "max_length": max_length}
    out_dir = Path(checkpoint_dir) / "evaluate" if out_dir is None else Path(out_dir)
    json_path, md_path = write_results(results, out_dir)
    print(markdown_table(results))
    print(f"litgpt evaluate: wrote {json_path} and {md_path}")
    return results


if __name__ == "__main__":
    from litgpt.__main__ import run_command

    run_command("evaluate")
