"""Two local lm-eval tasks from the held-out (validation) text of the offline corpus, for `litgpt evaluate
--include_path OUT`: task YAMLs (`dataset_path: json` with `data_files`, so nothing is downloaded) and their JSONL.

    python3 benchmarks/evaluate_tasks.py --corpus DATA/offline_corpus/corpus/val --out OUT [--seed 0]

- `corpus_heldout`: the perplexity of the held-out text (`loglikelihood_rolling`: word and byte perplexity, bits per
  byte). Documents are the validation files (literature.txt, dictionary.txt, any other *.txt), each cut at blank lines
  into documents of at most --doc_chars characters (a paragraph or entry is never split; a longer one is a document
  of its own), in file order.
- `gcide_definitions`: 4-way multiple choice, which definition belongs to a dictionary word. Each held-out GCIDE entry
  whose headword line names a part of speech gives one question: the context is the entry's headword line as the
  corpus prints it (`Word, pos.`, a newline), the choices its first sense (cut as the instruction pairs of
  `benchmarks/offline_corpus.py` cut it) and the first senses of three other entries, drawn with --seed among the
  entries of the same part of speech where there are at least three (a verb's definition never stands among
  nouns'), else among all; the right answer's position is drawn too. Accuracy and length-normalised accuracy, with
  lm-eval's standard error.

The YAMLs name their JSONL by absolute path, so they work from any directory. The same corpus and seed give the same
files byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_corpus import definition  # noqa: E402  (the instruction pairs' parser of a GCIDE entry)

PPL_TASK, MC_TASK = "corpus_heldout", "gcide_definitions"
MIN_SENSE_CHARS = 12  # as the instruction pairs: shorter senses are cross-references ("See Foo.")

PPL_YAML = """\
# Perplexity of the offline corpus's held-out text ({docs} documents, {chars:,} characters of {files}),
# scored over rolling windows of the model's context. Written by benchmarks/evaluate_tasks.py.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""

MC_YAML = """\
# 4-way multiple choice ({questions} questions): which definition belongs to a held-out GCIDE dictionary word. The
# context is the entry's headword line ("Word, pos." and a newline), the choices four first senses, three of them
# drawn (seed {seed}) from other entries of the same part of speech. Written by benchmarks/evaluate_tasks.py.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def blocks(text: str) -> list[str]:
    """The blank-line separated blocks of a text (paragraphs, dictionary entries), without empty ones."""
    return [b.strip("\n") for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]


def documents(texts: list[str], doc_chars: int) -> list[str]:
    """Consecutive blocks of each text joined (by a blank line) into documents of at most doc_chars characters; a
    block never splits, and no document spans two texts."""
    docs: list[str] = []
    for text in texts:
        current: list[str] = []
        size = 0
        for block in blocks(text):
            if current and size + 2 + len(block) > doc_chars:
                docs.append("\n\n".join(current))
                current, size = [], 0
            size += (2 if current else 0) + len(block)
            current.append(block)
        if current:
            docs.append("\n\n".join(current))
    return docs


def questions(entries: list[str], seed: int) -> list[dict]:
    """One 4-way question per entry with a part of speech and a sense of at least MIN_SENSE_CHARS characters."""
    parsed = []
    for entry in entries:
        d = definition(entry)
        if d and len(d[2]) >= MIN_SENSE_CHARS:
            parsed.append(d)
    by_pos: dict[str, list[int]] = defaultdict(list)
    for i, (_, pos, _) in enumerate(parsed):
        by_pos[pos].append(i)
    rng = random.Random(seed)
    out = []
    for i, (word, pos, sense) in enumerate(parsed):
        def usable(j: int) -> bool:
            return parsed[j][0].lower() != word.lower() and parsed[j][2] != sense

        pool = [j for j in by_pos[pos] if j != i and usable(j)]
        if len(set(parsed[j][2] for j in pool)) < 3:
            pool = [j for j in range(len(parsed)) if j != i and usable(j)]
            if len(set(parsed[j][2] for j in pool)) < 3:
                raise ValueError(f"{len(parsed)} dictionary entries with a definition give no 3 other senses for "
                                 f"{word!r}; a multiple-choice question needs at least 4 distinct senses")
        distractors: list[str] = []
        while len(distractors) < 3:
            other = parsed[rng.choice(pool)][2]
            if other not in distractors:
                distractors.append(other)
        label = rng.randrange(4)
        choices = distractors[:label] + [sense] + distractors[label:]
        out.append({"word": word, "pos": pos, "query": f"{word}, {pos}\n", "choices": choices, "label": label})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def build(corpus: Path, out: Path, seed: int = 0, doc_chars: int = 4000, max_questions: int | None = None) -> dict:
    """Write the two tasks' YAMLs and JSONL into `out`; return a summary (task names, counts, files)."""
    corpus, out = Path(corpus), Path(out).resolve()
    dictionary = corpus / "dictionary.txt"
    if not dictionary.is_file():
        raise FileNotFoundError(f"{dictionary} is missing: pass --corpus the offline corpus's corpus/val folder")
    files = sorted(corpus.glob("*.txt"), key=lambda p: (p.name != "literature.txt", p.name))
    texts = [f.read_text(encoding="utf-8") for f in files]
    docs = documents(texts, doc_chars)
    mc = questions(blocks(dictionary.read_text(encoding="utf-8")), seed)
    if max_questions is not None:
        mc = mc[:max_questions]
    if not docs or not mc:
        raise ValueError(f"{corpus} gives {len(docs)} documents and {len(mc)} questions; both tasks need some")
    out.mkdir(parents=True, exist_ok=True)
    ppl_data, mc_data = out / f"{PPL_TASK}.jsonl", out / f"{MC_TASK}.jsonl"
    write_jsonl(ppl_data, [{"text": d} for d in docs])
    write_jsonl(mc_data, mc)
    (out / f"{PPL_TASK}.yaml").write_text(PPL_YAML.format(
        task=PPL_TASK, data=json.dumps(str(ppl_data)), docs=len(docs), chars=sum(len(d) for d in docs),
        files=", ".join(f.name for f in files)), encoding="utf-8")
    (out / f"{MC_TASK}.yaml").write_text(MC_YAML.format(
        task=MC_TASK, data=json.dumps(str(mc_data)), questions=len(mc), seed=seed), encoding="utf-8")
    return {"tasks": [PPL_TASK, MC_TASK], "documents": len(docs), "questions": len(mc), "out": str(out)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="the offline corpus's corpus/val folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the YAMLs and JSONL (--include_path)")
    parser.add_argument("--seed", type=int, default=0, help="draw of the distractors and of the answers' positions")
    parser.add_argument("--doc_chars", type=int, default=4000, help="most characters of a perplexity document")
    parser.add_argument("--max_questions", type=int, default=None, help="keep the first N questions (default all)")
    args = parser.parse_args(argv)
    summary = build(args.corpus, args.out, args.seed, args.doc_chars, args.max_questions)
    print(f"wrote {summary['out']}: {PPL_TASK} ({summary['documents']} documents), {MC_TASK} "
          f"({summary['questions']} questions); use --tasks {PPL_TASK},{MC_TASK} --include_path {summary['out']}")


if __name__ == "__main__":
    main()
