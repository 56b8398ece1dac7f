"""Real text without downloads: the standard library's code and pydoc topics as byte tokens,
split by document, and the user's own files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from loraplus_lab.sims.realmodels import corpus as C


def test_builtin_corpora_are_real_text_split_by_document() -> None:
    code = C.load_corpus("stdlib-code")
    prose = C.load_corpus("pydoc-topics")
    for c in (code, prose):
        assert c.train.dtype == np.uint8 and c.val.size > 0 and c.train.size > 10 * c.val.size / 2
        assert (c.train[c.train < C.N_SPECIAL] == C.EOD_ID).all()  # only document ends
        assert c.documents[0] > 0 and c.documents[1] > 0
        assert len(c.sha256) == 64 and c.describe()["python"] == c.python
    assert code.train.size > 1_000_000  # megabytes of Python source
    assert b"def " in code.train[:200_000].tobytes()
    assert b" the " in prose.train.tobytes()
    # the same content gives the same hash; a different corpus another
    assert C.load_corpus("pydoc-topics").sha256 == prose.sha256 != code.sha256


def test_split_of_a_document_depends_only_on_its_name() -> None:
    docs = [(f"doc{i}", f"text number {i} " * 20) for i in range(60)]
    a = C.from_documents("a", docs)
    b = C.from_documents("b", docs + [("extra", "more text " * 30)])
    held = {n for n, _ in docs if C._is_held_out(n, 0.1)}
    assert 0 < len(held) < len(docs) and a.documents == (len(docs) - len(held), len(held))
    val_a = a.val.tobytes()
    val_b = b.val.tobytes()
    for n, t in docs:  # every document keeps its side when another is added
        assert (t.encode() in val_a) == (n in held) == (t.encode() in val_b)
    h = int.from_bytes(hashlib.sha256(b"doc7").digest()[:8], "big")
    assert C._is_held_out("doc7", 0.1) == (h < 0.1 * 2.0**64)


def test_special_bytes_are_replaced_and_windows_are_deterministic() -> None:
    t = C.encode("a\x00b\x01c\x02d\x03e\x04")
    assert t.tolist() == list(b"a b c d e\x04")
    assert C.decode([*b"hi", 2, *b"!"]) == "hi!"
    stream = np.arange(1000, dtype=np.uint8)
    w1 = C.random_windows(stream, 16, 5, (3, 7))
    w2 = C.random_windows(stream, 16, 5, (3, 7))
    w3 = C.random_windows(stream, 16, 5, (3, 8))
    assert w1.shape == (5, 16) and w1.dtype == np.int64
    assert np.array_equal(w1, w2) and not np.array_equal(w1, w3)
    assert (np.diff(w1, axis=1) % 256 == 1).all()  # contiguous windows
    f = C.fixed_windows(stream, 10, 4)
    assert f[0, 0] == 0 and f[-1, -1] == stream[-1] and f.shape == (4, 10)


def test_user_files_and_folders(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("hello world\n" * 50)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# title\n" * 40)
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    c = C.load_corpus(tmp_path)
    assert c.documents[0] + c.documents[1] == 2
    one = C.load_corpus(tmp_path / "a.txt")  # a single document: split by position
    assert one.val.size == pytest.approx(0.1 * (one.train.size + one.val.size), abs=2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"ab\x00cd", "is binary"),
        (b"\xff\xfe\xfa", "not UTF-8"),
    ],
)
def test_bad_files_are_named_in_one_line(tmp_path, content: bytes, message: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(C.CorpusError, match=message) as e:
        C.load_corpus(p)
    assert "bad.txt" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(C.CorpusError):
        C.check_corpus_name(str(p))


def test_unknown_names() -> None:
    for bad in ("no-such-corpus", "hf:", "hf:a:b:c"):
        with pytest.raises(C.CorpusError):
            C.load_corpus(bad)
    assert C.check_corpus_name("hf:wikitext:wikitext-2-raw-v1").startswith("hf:")


def test_hugging_face_datasets_use_their_own_splits(monkeypatch) -> None:
    """``hf:NAME:CONFIG`` reads the dataset's train and validation splits (column ``text``)
    through ``datasets.load_dataset``; offline here, so the loader is replaced by a stand-in."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name, config=None):
        calls.append((name, config))
        train = datasets.Dataset.from_dict({"text": ["alpha beta " * 20, "", "gamma " * 30]})
        val = datasets.Dataset.from_dict({"text": ["delta epsilon " * 10]})
        return datasets.DatasetDict({"train": train, "validation": val})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    c = C.load_corpus("hf:wikitext:wikitext-2-raw-v1")
    assert calls == [("wikitext", "wikitext-2-raw-v1")]
    assert c.documents == (2, 1)  # the empty line is dropped
    assert c.val.tobytes().startswith(b"delta epsilon")
    assert b"gamma" in c.train.tobytes() and b"delta" not in c.train.tobytes()
