"""Streaming: incremental detokenization (`IncrementalDecoder`), incremental stop matching (`StopMatcher`) and
`stream_tokens` built on them, with work per token that does not grow with the length of the stream."""

import functools
import io
import json
import random
from pathlib import Path
from typing import Iterator

import pytest
import torch

from litgpt.generate.base import StopMatcher, _host_ids, stream_tokens, trim_at_stop
from litgpt.scripts.train_tokenizer import train_tokenizer
from litgpt.tokenizer import REPLACEMENT_CHAR, IncrementalDecoder, Tokenizer
from test_tokenizer import ListTexts, make_corpus

# characters of 2, 3 and 4 UTF-8 bytes, so that merges and byte tokens split them across tokens
MULTIBYTE = [
    "héllo wörld — naïve 日本語 🙂",
    "café crème, Ωμέγα and ß; 日本語の文です 🙂🙂 ✓",
    "naïve façade — wörld 🐍 日本",
]


def multibyte_corpus() -> list[str]:
    return make_corpus() + MULTIBYTE * 20


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("byte_level")
    return Tokenizer(train_tokenizer(ListTexts(texts=multibyte_corpus()), out, vocab_size=350, min_frequency=1))


@functools.lru_cache(maxsize=None)
def byte_token_ids(tokenizer: Tokenizer) -> list[int]:
    """The id of the one-byte token of each byte value, for a GPT-2 style byte-level BPE.

    Byte-level BPE spells byte b as the character b when that is a printable Latin-1 character and otherwise as
    the character 256 + (how many bytes before b were not printable)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    ids, shifted = [], 0
    for b in range(256):
        if b in printable:
            ids.append(tokenizer.token_to_id(chr(b)))
        else:
            ids.append(tokenizer.token_to_id(chr(256 + shifted)))
            shifted += 1
    return ids


@functools.lru_cache(maxsize=None)
def _byte_of_char(tokenizer: Tokenizer) -> dict[str, int]:
    return {tokenizer.processor.id_to_token(i): b for b, i in enumerate(byte_token_ids(tokenizer))}


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """The bytes a byte-level BPE token stands for."""
    byte_of = _byte_of_char(tokenizer)
    return bytes(byte_of[c] for c in tokenizer.processor.id_to_token(token_id))


def split_some_tokens(tokenizer: Tokenizer, ids: list[int], rng: random.Random, p: float = 0.3) -> list[int]:
    """`ids` with some tokens replaced by their single bytes: characters then end up split across tokens."""
    byte_ids = byte_token_ids(tokenizer)
    out = []
    for i in ids:
        if i != tokenizer.eos_id and rng.random() < p:
            out.extend(byte_ids[b] for b in token_bytes(tokenizer, i))
        else:
            out.append(i)
    return out


def random_sequences(tokenizer: Tokenizer, n: int, seed: int = 0) -> Iterator[list[int]]:
    """Uniformly random ids, encoded multibyte text, and encoded text with tokens broken into bytes."""
    rng = random.Random(seed)
    byte_ids = byte_token_ids(tokenizer)
    for k in range(n):
        kind = k % 4
        if kind == 0:
            yield [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(0, 40))]
        elif kind == 1:
            text = " ".join(rng.choice(MULTIBYTE + make_corpus(3, seed=k)) for _ in range(2))
            yield tokenizer.encode(text).tolist()
        elif kind == 2:
            text = rng.choice(MULTIBYTE)
            ids = [byte_ids[b] for b in text.encode("utf-8")]
            start, stop = sorted(rng.sample(range(len(ids) + 1), 2))  # may cut characters at both ends
            yield ids[start:stop]
        else:
            ids = tokenizer.encode(rng.choice(MULTIBYTE)).tolist()
            yield split_some_tokens(tokenizer, ids, rng)


def decode_incrementally(decoder: IncrementalDecoder, ids: list[int]) -> tuple[str, list[str]]:
    """The joined text of pushing every id and flushing, and the text out after each push."""
    pieces, so_far = [], []
    for i in ids:
        pieces.append(decoder.push(i))
        so_far.append("".join(pieces))
    pieces.append(decoder.flush())
    return "".join(pieces), so_far


def check_decoder(tokenizer: Tokenizer, sequences, **kwargs) -> int:
    """Check the decoder on every sequence; returns how many pushes held text back."""
    held = 0
    for ids in sequences:
        text, so_far = decode_incrementally(IncrementalDecoder(tokenizer, **kwargs), ids)
        full = tokenizer.decode(ids)
        assert text == full, ids
        for k, out in enumerate(so_far, start=1):
            prefix = tokenizer.decode(ids[:k])
            assert full.startswith(out) and prefix.startswith(out), (ids, k)
            if not prefix.endswith(REPLACEMENT_CHAR) and ids[k - 1] not in tokenizer.byte_fallback_ids:
                assert out == prefix, (ids, k)  # held back only while a character can still change
            held += out != prefix
    return held


# ------------------------------------------------------------------------------------------------ decoding
def test_byte_level_split_characters_wait_for_their_last_byte(byte_level):
    byte_ids = byte_token_ids(byte_level)
    assert byte_level.decode([byte_ids[b] for b in "ü日🙂".encode("utf-8")]) == "ü日🙂"
    decoder = IncrementalDecoder(byte_level)
    for char in "aü日🙂b":
        data = char.encode("utf-8")
        outs = [decoder.push(byte_ids[b]) for b in data]
        assert outs == [""] * (len(data) - 1) + [char]  # nothing until the character's last byte, then all of it
    assert decoder.flush() == ""
    # a character cut off at the end comes out as U+FFFD on flush, as decode writes it
    decoder = IncrementalDecoder(byte_level)
    assert [decoder.push(byte_ids[b]) for b in "日".encode("utf-8")[:2]] == ["", ""]
    assert decoder.flush() == byte_level.decode([byte_ids[b] for b in "日".encode("utf-8")[:2]]) == REPLACEMENT_CHAR


def test_tokenizer_merges_split_multibyte_characters(byte_level):
    """The corpus makes merged tokens that end or start inside a character: the cases the decoder must hold."""
    pieces = [byte_level.decode([i]) for i in range(byte_level.vocab_size)]
    assert sum(REPLACEMENT_CHAR in p for p in pieces) > 20
    ids = byte_level.encode(" ".join(MULTIBYTE)).tolist()
    assert any(REPLACEMENT_CHAR in byte_level.decode(ids[:k]) for k in range(len(ids)))


@pytest.mark.parametrize("kwargs", [{}, dict(context=1, max_window=3), dict(context=2, max_window=5, max_pending=8)])
def test_byte_level_incremental_text_equals_decode(byte_level, kwargs):
    held = check_decoder(byte_level, random_sequences(byte_level, 400), **kwargs)
    assert held > 50  # the sequences did split characters


def test_incremental_decoder_long_stream_restarts_its_window(byte_level):
    rng = random.Random(1)
    ids = split_some_tokens(byte_level, byte_level.encode(" ".join(MULTIBYTE * 30)).tolist(), rng)
    decoder = IncrementalDecoder(byte_level)
    text = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert text == byte_level.decode(ids)
    assert len(decoder._ids) <= decoder.max_window + 4  # a short window, not the whole stream


def test_sentencepiece_leading_space_and_byte_fallback(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(multibyte_corpus()), model_prefix=str(tmp_path / "tokenizer"), vocab_size=330,
        model_type="bpe", minloglevel=2, byte_fallback=True, character_coverage=0.98,
    )
    tokenizer = Tokenizer(tmp_path)
    the = tokenizer.token_to_id("▁the")
    # the first piece loses its leading space, later ones keep it: a decoder that restarted on a context of
    # text-less ids (control tokens) would drop the space of " the"
    ids = [1, the] + [2] * 150 + [the] * 30
    assert decode_incrementally(IncrementalDecoder(tokenizer), ids)[0] == tokenizer.decode(ids) == "the" + " the" * 30
    ids = [1] * 150 + [the] * 3  # no text before: the first "▁the" does lose its space
    assert decode_incrementally(IncrementalDecoder(tokenizer), ids)[0] == tokenizer.decode(ids) == "the the the"
    rng = random.Random(0)
    sequences = [[rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(0, 50))] for _ in range(300)]
    sequences += [tokenizer.encode(t).tolist() for t in MULTIBYTE + make_corpus(20)]
    check_decoder(tokenizer, sequences)
    check_decoder(tokenizer, sequences, context=1, max_window=3)


def llama_style_tokenizer(out_dir: Path, decoder: str) -> Tokenizer:
    """A tokenizer.json like Llama's or Mistral's: Metaspace pieces plus <0xNN> byte fallback pieces."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    base = HFTokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    base.train_from_iterator(multibyte_corpus(), trainer)
    model = json.loads(base.to_str())["model"]
    vocab = dict(model["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = HFTokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    if decoder == "llama":  # Llama 2's decoder: the run of byte pieces is decoded as a whole, then one space cut
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    else:
        tokenizer.decoder = decoders.Metaspace()
    out_dir.mkdir(parents=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return Tokenizer(out_dir)


@pytest.mark.parametrize("decoder", ["llama", "metaspace"])
def test_metaspace_and_byte_fallback_tokenizers(tmp_path, decoder):
    tokenizer = llama_style_tokenizer(tmp_path / decoder, decoder)
    assert tokenizer.decode(tokenizer.encode(MULTIBYTE[0])) == MULTIBYTE[0]
    byte_pieces = tokenizer.byte_fallback_ids
    assert len(byte_pieces) == (256 if decoder == "llama" else 0)
    rng = random.Random(0)
    byte_range = sorted(i for i in range(tokenizer.vocab_size) if tokenizer.processor.id_to_token(i).startswith("<0x"))
    sequences = []
    for _ in range(400):  # pieces mixed with (often invalid) runs of byte pieces, ASCII bytes included
        sequences.append([rng.choice(byte_range) if rng.random() < 0.4 else rng.randrange(tokenizer.vocab_size)
                          for _ in range(rng.randint(0, 50))])
    sequences += [tokenizer.encode(t).tolist() for t in MULTIBYTE + make_corpus(20)]
    check_decoder(tokenizer, sequences)
    check_decoder(tokenizer, sequences, context=1, max_window=3)
    if decoder == "llama":  # a later byte can turn a run's valid character into U+FFFD: hold runs to their end
        a, e6, x = (tokenizer.token_to_id(p) for p in ("<0x41>", "<0xE6>", "▁the"))
        assert tokenizer.decode([a]) == "A" and tokenizer.decode([a, e6, x]) == "�� the"
        decoder_ = IncrementalDecoder(tokenizer)
        assert [decoder_.push(i) for i in (a, e6, x)] == ["", "", "�� the"]


# ------------------------------------------------------------------------------------------------ stop matching
def reference_stream(ids: list[int], stop_tokens: list[list[int]]) -> tuple[list[int], list[int]]:
    """What streaming does by definition: take ids until trim_at_stop finds a stop; keep what it keeps."""
    for k in range(1, len(ids) + 1):
        kept, stopped = trim_at_stop(ids[:k], stop_tokens)
        if stopped:
            return kept, ids[:k]
    return list(ids), list(ids)


def match_stream(ids: list[int], stop_tokens: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """kept and taken ids with StopMatcher, and how many ids it held back after each id."""
    matcher, held = StopMatcher(stop_tokens), []
    for k, i in enumerate(ids, start=1):
        n = matcher.push(i)
        if n:
            return ids[: k - n], ids[:k], held
        held.append(matcher.held)
    return list(ids), list(ids), held


@pytest.mark.parametrize(
    "ids, stops, kept, taken, held",
    [
        ([1, 2, 3], [[9]], [1, 2, 3], [1, 2, 3], [0, 0, 0]),  # no stop
        ([1, 2, 3], [], [1, 2, 3], [1, 2, 3], [0, 0, 0]),  # no stop sequences at all
        ([4, 1, 2], [[4]], [], [4], []),  # single-token stop at the very start
        ([1, 4, 2], [[4], [9, 9]], [1], [1, 4], [0]),
        ([2, 3, 1], [[2, 3]], [], [2, 3], [1]),  # multi-token stop at the very start
        ([1, 2, 4, 2, 3, 5], [[2, 3]], [1, 2, 4], [1, 2, 4, 2, 3], [0, 1, 0, 1]),
        ([1, 5, 5, 5, 7, 8], [[5, 5, 7]], [1, 5], [1, 5, 5, 5, 7], [0, 1, 2, 2]),  # overlapping prefixes
        ([5, 5, 5, 5, 6], [[5, 5, 7]], [5, 5, 5, 5, 6], [5, 5, 5, 5, 6], [1, 2, 2, 2, 0]),  # prefix never completed
        ([1, 2, 3, 4], [[1, 2, 3, 4], [3]], [1, 2], [1, 2, 3], [1, 2]),  # the first stop completed wins
        ([1, 2, 3], [[3], [2, 3]], [1], [1, 2, 3], [0, 1]),  # both end here: cut at the earliest start
        ([1, 2, 1, 2, 1, 3], [[1, 2, 1, 3]], [1, 2], [1, 2, 1, 2, 1, 3], [1, 2, 3, 2, 3]),
    ],
)
def test_stop_matcher_cases(ids, stops, kept, taken, held):
    assert match_stream(ids, stops) == (kept, taken, held)
    assert reference_stream(ids, stops) == (kept, taken)


def test_stop_matcher_equals_trim_at_stop_on_random_streams():
    rng = random.Random(0)
    for _ in range(3000):
        alphabet = rng.randint(2, 5)  # few ids: many partial and overlapping matches
        stops = [[rng.randrange(alphabet) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(0, 3))]
        ids = [rng.randrange(alphabet) for _ in range(rng.randint(0, 30))]
        kept, taken, held = match_stream(ids, stops)
        assert (kept, taken) == reference_stream(ids, stops), (ids, stops)
        assert kept == trim_at_stop(taken, stops)[0]
        longest = max((len(s) for s in stops), default=1)
        for k, h in enumerate(held, start=1):
            assert h <= longest - 1
            # no stop sequence can start before the held tail, however the stream goes on ...
            for j in range(k - h):
                assert not any(len(s) > k - j and s[: k - j] == ids[j:k] for s in stops), (ids, stops, k)
            # ... and one can start at the held tail
            if h:
                assert any(s[:h] == ids[k - h : k] for s in stops)


def test_stop_matcher_rejects_empty_stop_sequences():
    with pytest.raises(ValueError, match="stop sequence 1 is empty"):
        StopMatcher([[1], []])


# ------------------------------------------------------------------------------------------------ stream_tokens
class Recorder:
    """A text stream that records every write."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        self.flushes += 1

    @property
    def text(self) -> str:
        return "".join(self.writes)


def token_stream(ids: list[int], log: list[str], out: Recorder) -> Iterator[torch.Tensor]:
    """ids as (1, 1) tensors, like generate_tokens; logs what was written before each token was asked for."""
    for i in ids:
        log.append(out.text)
        yield torch.tensor([[i]])


def test_stream_tokens_writes_decode_of_kept_ids_and_never_a_stop_sequence(byte_level):
    rng = random.Random(0)
    eos = byte_level.eos_id
    n_stopped = 0
    for k, ids in enumerate(random_sequences(byte_level, 400, seed=1)):
        stops = [[eos]]
        if ids and k % 2:  # a multi-token stop taken from the sequence itself, maybe splitting a character
            start = rng.randrange(len(ids))
            stops.append(ids[start : start + rng.randint(1, 4)])
        if k % 3 == 0:
            stops.append([rng.randrange(byte_level.vocab_size) for _ in range(2)])
        out, log = Recorder(), []
        kept, taken, ttft = stream_tokens(token_stream(ids, log, out), byte_level, stops, out)
        assert (kept, taken) == reference_stream(ids, stops)
        assert out.text == byte_level.decode(kept)
        assert ttft >= 0.0
        n_stopped += len(taken) > len(kept)
        # while streaming, everything written is part of the final text: nothing of the stop sequence
        for before in log:
            assert byte_level.decode(kept).startswith(before)
    assert n_stopped > 100


def test_stream_tokens_holds_back_only_what_could_become_a_stop(byte_level):
    x, y, a, c, z = (byte_level.encode(ch).tolist()[0] for ch in "xyacz")
    ids = [x, y, a, a, a, c, z]
    out, log = Recorder(), []
    kept, taken, _ = stream_tokens(token_stream(ids, log, out), byte_level, [[a, a, c]], out)
    assert (kept, taken) == ([x, y, a], [x, y, a, a, a, c])
    # before each token is asked for: what the tokens so far allow, all but the possible start of "aac"
    assert log == ["", "x", "xy", "xy", "xy", "xya"]
    assert out.text == "xya" and "z" not in out.text
    # a character split over byte tokens, followed by a stop split over tokens
    byte_ids = byte_token_ids(byte_level)
    snake = [byte_ids[b] for b in "🐍".encode("utf-8")]
    out, log = Recorder(), []
    kept, taken, _ = stream_tokens(token_stream([x] + snake + [a, a, c, z], log, out), byte_level, [[a, a, c]], out)
    assert kept == [x] + snake and out.text == "x🐍"
    assert log == ["", "x", "x", "x", "x", "x🐍", "x🐍", "x🐍"]


def test_stream_tokens_without_stop_and_empty_stream(byte_level):
    ids = byte_level.encode(" ".join(MULTIBYTE)).tolist()
    out, log = Recorder(), []
    assert stream_tokens(token_stream(ids, log, out), byte_level, [], out)[:2] == (ids, ids)
    assert out.text == " ".join(MULTIBYTE)
    out = Recorder()
    assert stream_tokens(iter(()), byte_level, [[0]], out) == ([], [], 0.0)
    assert out.text == ""


@pytest.mark.parametrize("read_ahead", [None, 0, 1, 3])
def test_read_ahead_asks_for_the_next_tokens_before_reading_this_one(byte_level, read_ahead):
    ids = byte_level.encode("the cat saw the dog and the bird flew over the house").tolist()
    stop = ids[3]
    assert stop not in ids[:3] and len(ids) > 7
    pulled = []

    def tokens():
        for i in ids:
            pulled.append(i)
            yield torch.tensor([[i]])

    out = Recorder()
    kept, taken, _ = stream_tokens(tokens(), byte_level, [[stop]], out, read_ahead=read_ahead)
    assert (kept, taken) == (ids[:3], ids[:4]) and out.text == byte_level.decode(ids[:3])
    # on the CPU the default reads each token as it comes; read-ahead n has asked for n tokens past the stop
    assert len(pulled) == 4 + (read_ahead or 0)
    # and every token comes out, in order, however far ahead it reads
    kept, taken, _ = stream_tokens(tokens(), byte_level, [], Recorder(), read_ahead=read_ahead)
    assert kept == taken == ids



@pytest.mark.cuda
@pytest.mark.parametrize("read_ahead", [None, 0, 2, 5])
def test_host_ids_read_cuda_tokens_in_order_through_the_pinned_ring(read_ahead):
    """Each token is copied to a slot of the pinned ring when asked for and read after its own event (a read that
    did not wait would see the slot before the slow step's token lands), and a slot is reused only once read."""

    def tokens():
        for i in range(40):
            torch.cuda._sleep(200_000)  # a slow step: the token is made after it, on the device
            yield torch.full((1, 1), i, dtype=torch.int64, device="cuda")

    assert list(_host_ids(tokens(), read_ahead)) == list(range(40))


# ------------------------------------------------------------------------------------------------ work per token
def count_decode_work(monkeypatch, tokenizer: Tokenizer) -> dict:
    """Wrap `tokenizer.decode` to count its calls, the ids it decodes and the characters it returns."""
    counts = dict(calls=0, ids=0, chars=0, max_ids=0)
    original = tokenizer.decode

    def counting_decode(ids, skip_special_tokens: bool = False) -> str:
        text = original(ids, skip_special_tokens=skip_special_tokens)
        counts["calls"] += 1
        counts["ids"] += len(ids)
        counts["max_ids"] = max(counts["max_ids"], len(ids))
        counts["chars"] += len(text)
        return text

    monkeypatch.setattr(tokenizer, "decode", counting_decode)
    return counts


def long_stream(tokenizer: Tokenizer, n: int) -> list[int]:
    """n ids of multibyte text, some tokens broken into bytes; no EOS in it."""
    rng = random.Random(0)
    ids: list[int] = []
    while len(ids) < n:
        ids += split_some_tokens(tokenizer, tokenizer.encode(" " + rng.choice(MULTIBYTE + make_corpus(5))).tolist(),
                                 rng, p=0.1)
    return ids[:n]


def test_streaming_work_per_token_does_not_grow_with_length(byte_level, monkeypatch):
    """Re-decoding the whole text at every token (and re-scanning every id for stops) costs O(n) per token; the
    incremental decoder and matcher cost O(1). The quadratic version decoded n/2 ids per token (499.5 at
    n = 1000, 1999.5 at n = 4000: 4000 tokens cost it 16 times what 1000 do); this one decodes about 11."""
    eos = byte_level.eos_id
    ids = long_stream(byte_level, 4000)
    common = max(set(ids), key=ids.count)
    stops = [[eos], [common, common, eos], [common, eos]]  # partial matches of `common` are held all the time
    totals = {}
    for n in (1000, 4000):
        counts = count_decode_work(monkeypatch, byte_level)
        out = Recorder()
        kept, taken, _ = stream_tokens(iter(torch.tensor(ids[:n]).view(-1, 1, 1)), byte_level, stops, out)
        monkeypatch.undo()
        assert kept == taken == ids[:n] and out.text == byte_level.decode(ids[:n])
        assert counts["calls"] / n < 1.5  # about one decode per token
        assert counts["ids"] / n < 16  # a short window per decode, at 1000 tokens as at 4000
        assert counts["chars"] / n < 64
        assert counts["max_ids"] <= 40
        totals[n] = counts
    assert totals[4000]["ids"] < 4.5 * totals[1000]["ids"]
    assert totals[4000]["chars"] < 4.5 * totals[1000]["chars"]
    assert totals[4000]["calls"] < 4.5 * totals[1000]["calls"]


def test_incremental_decoder_work_per_id_is_bounded(byte_level, monkeypatch):
    ids = long_stream(byte_level, 3000)
    counts = count_decode_work(monkeypatch, byte_level)
    decoder = IncrementalDecoder(byte_level)
    text = "".join(decoder.push(i) for i in ids) + decoder.flush()
    monkeypatch.undo()
    assert text == byte_level.decode(ids)
    assert counts["ids"] / len(ids) < 16 and counts["max_ids"] <= decoder.max_window + decoder.max_pending


def test_llm_stream_equals_generate(tmp_path):
    """End to end on a tiny model: the streamed text is the returned text and the non-streamed one."""
    from litgpt import LLM
    from test_generate import make_checkpoint

    llm = LLM.load(make_checkpoint(tmp_path), device="cpu")
    out = io.StringIO()
    streamed, _ = llm.generate_with_stats(["The cat"], max_new_tokens=20, temperature=0.0, stream=out)
    assert out.getvalue() == "The cat" + streamed[0]
    assert streamed[0] == llm.generate("The cat", max_new_tokens=20, temperature=0.0)
