"""benchmarks/evaluate_tasks.py: the held-out perplexity and dictionary multiple-choice tasks it writes from a small
made-up corpus in the offline corpus's layout, as lm-eval loads them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import evaluate_tasks  # noqa: E402

NOUNS = {
    "Anvil": "An iron block with a smooth face, on which metals are hammered and shaped.",
    "Beacon": "A signal fire to notify of the approach of an enemy, or to give any notice.",
    "Candle": "A slender, cylindrical body of tallow, containing a wick composed of loosely twisted threads.",
    "Dagger": "A short weapon used for stabbing; a poniard.",
    "Ember": "A lighted coal, smoldering amid ashes.",
}
VERBS = {
    "Abate": "To beat down; to overthrow.",
    "Bask": "To lie in warmth; to be exposed to genial heat.",
    "Carve": "To cut, as wood, stone, or other material, in an artistic or decorative manner.",
    "Delve": "To dig; to open the ground with a spade.",
}


def entry(word: str, pos: str, sense: str) -> str:
    """A GCIDE entry as the corpus prints it: headword (pronunciation), part of speech, etymology, then the sense on
    an indented line, a usage tag and an author (where the sense is cut)."""
    return f'{word} ({word.lower()}"), {pos} [OE. {word.lower()}.]\n {sense} [Obs.] --Author.'


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    val = tmp_path / "corpus" / "val"
    val.mkdir(parents=True)
    entries = [entry(w, "n.", s) for w, s in NOUNS.items()] + [entry(w, "v. t.", s) for w, s in VERBS.items()]
    entries.insert(3, "Zebu\n No part of speech on this headword line.")  # skipped: no part of speech
    entries.insert(5, entry("Foo", "n.", "See Bar."))  # skipped: a cross-reference, not a sense
    (val / "dictionary.txt").write_text("\n\n".join(entries) + "\n")
    paragraphs = [f"Paragraph {i} of the held-out verse,\nits second line {'and more ' * i}." for i in range(6)]
    (val / "literature.txt").write_text("\n\n".join(paragraphs) + "\n")
    return val


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_multiple_choice_questions(corpus: Path, tmp_path: Path) -> None:
    summary = evaluate_tasks.build(corpus, tmp_path / "tasks", seed=3)
    rows = read_jsonl(tmp_path / "tasks" / "gcide_definitions.jsonl")
    assert summary["questions"] == len(rows) == len(NOUNS) + len(VERBS)
    senses = {**NOUNS, **VERBS}
    for row in rows:
        word = row["word"]
        assert row["query"] == f"{word}, {row['pos']}\n"
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
        assert row["choices"][row["label"]] == senses[word]  # the right answer is the entry's first sense
        same_pos = NOUNS if row["pos"] == "n." else VERBS
        assert row["pos"] == ("n." if word in NOUNS else "v. t.")
        # distractors: other entries of the same part of speech (each group has at least 3 others)
        assert set(row["choices"]) - {senses[word]} <= set(same_pos.values()) - {senses[word]}
    assert "See Bar." not in {c for row in rows for c in row["choices"]}
    assert len({row["label"] for row in rows}) > 1  # the answer's position is drawn, not fixed


def test_same_seed_same_files_other_seed_other_draw(corpus: Path, tmp_path: Path) -> None:
    evaluate_tasks.build(corpus, tmp_path / "a", seed=0)
    evaluate_tasks.build(corpus, tmp_path / "b", seed=0)
    evaluate_tasks.build(corpus, tmp_path / "c", seed=1)
    for name in ("gcide_definitions.jsonl", "corpus_heldout.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    drawn = [read_jsonl(tmp_path / run / "gcide_definitions.jsonl") for run in ("a", "c")]
    assert drawn[0] != drawn[1]


def test_perplexity_documents(corpus: Path, tmp_path: Path) -> None:
    summary = evaluate_tasks.build(corpus, tmp_path / "tasks", doc_chars=200)
    docs = [row["text"] for row in read_jsonl(tmp_path / "tasks" / "corpus_heldout.jsonl")]
    assert summary["documents"] == len(docs)
    literature = (corpus / "literature.txt").read_text().strip()
    dictionary = (corpus / "dictionary.txt").read_text().strip()
    # literature first, then the dictionary; joined back, the documents are the two files' text
    n_lit = next(i for i, d in enumerate(docs) if d.startswith("Anvil"))
    assert "\n\n".join(docs[:n_lit]) == literature and "\n\n".join(docs[n_lit:]) == dictionary
    blocks = evaluate_tasks.blocks(literature) + evaluate_tasks.blocks(dictionary)
    for doc in docs:  # at most doc_chars, unless one block is longer; no block is cut
        assert len(doc) <= 200 or doc in blocks
        assert all(part in blocks for part in doc.split("\n\n"))


def test_yaml_files(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks"
    evaluate_tasks.build(corpus, out)
    ppl = yaml.safe_load((out / "corpus_heldout.yaml").read_text())
    mc = yaml.safe_load((out / "gcide_definitions.yaml").read_text())
    assert ppl["task"] == "corpus_heldout" and ppl["output_type"] == "loglikelihood_rolling"
    assert mc["task"] == "gcide_definitions" and mc["output_type"] == "multiple_choice"
    for task in (ppl, mc):  # local data by absolute path: no hub, any working directory
        assert task["dataset_path"] == "json"
        data = Path(task["dataset_kwargs"]["data_files"]["test"])
        assert data.is_absolute() and data.is_file() and data.parent == out.resolve()


def test_lm_eval_loads_the_tasks(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    from litgpt.evaluate import load_tasks

    out = tmp_path / "tasks"
    evaluate_tasks.build(corpus, out)
    items, _ = load_tasks(["corpus_heldout", "gcide_definitions"], out)
    tasks = {task.config.task: task for task in items}
    assert set(tasks) == {"corpus_heldout", "gcide_definitions"}
    mc = tasks["gcide_definitions"]
    doc = list(mc.test_docs())[0]
    row = read_jsonl(out / "gcide_definitions.jsonl")[0]
    assert mc.doc_to_text(doc) == row["query"]
    assert mc.doc_to_choice(doc) == row["choices"] and mc.doc_to_target(doc) == row["label"]
    ppl = tasks["corpus_heldout"]
    docs = [ppl.doc_to_target(d) for d in ppl.test_docs()]
    assert docs == [r["text"] for r in read_jsonl(out / "corpus_heldout.jsonl")]


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dictionary.txt is missing"):
        evaluate_tasks.build(tmp_path, tmp_path / "out")
    (tmp_path / "dictionary.txt").write_text(entry("Anvil", "n.", NOUNS["Anvil"]) + "\n\n"
                                             + entry("Bask", "v. t.", VERBS["Bask"]) + "\n")
    with pytest.raises(ValueError, match="at least 4 distinct senses"):
        evaluate_tasks.build(tmp_path, tmp_path / "out")
