"""scripts/prepare_corpus.py on synthetic SWORD and dictd modules built here (no packages, no network)."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest

from ._scripts import load_script


pc = load_script("prepare_corpus")


def write_sword_module(directory: Path, testament: str, books: list[list[str]], *, wide: bool) -> None:
    """Write ``{testament}.bzs/.bzz/.bzv`` with one zlib block per book, one index entry per verse.

    ``wide`` selects the 12-byte (zCom4) verse-index layout instead of the 10-byte one. An empty
    entry and a duplicate entry (a comment linked from two verses) are included on purpose.
    """
    directory.mkdir(parents=True, exist_ok=True)
    zs, zz, zv = bytearray(), bytearray(), bytearray()
    fmt = "<III" if wide else "<IIH"
    zv += struct.pack(fmt, 0, 0, 0)  # module header entry: empty
    for b, verses in enumerate(books):
        raw = b""
        for v in verses:
            data = v.encode()
            zv += struct.pack(fmt, b, len(raw), len(data))
            raw += data
        zv += zv[-(12 if wide else 10):]  # same span again: must be read once
        comp = zlib.compress(raw)
        zs += struct.pack("<III", len(zz), len(comp), len(raw))
        zz += comp
    (directory / f"{testament}.bzs").write_bytes(bytes(zs))
    (directory / f"{testament}.bzz").write_bytes(bytes(zz))
    (directory / f"{testament}.bzv").write_bytes(bytes(zv))


BOOKS = [
    ['<chapter n="1"/><title type="x-s">Chapter One</title><div type="x-p"/>In the <w lemma="x">beginning</w> was the word.',
     'The word was <hi type="italic">good</hi>.<note placement="foot">a footnote</note> It &amp; the light.'],
    ['<div type="x-p"/>A second book starts here.', "And it ends here."],
]


@pytest.mark.parametrize("wide", [False, True])
def test_sword_reader_reads_both_index_layouts_and_dedupes(tmp_path, wide):
    write_sword_module(tmp_path, "ot", BOOKS, wide=wide)
    blocks = pc.read_sword_blocks(tmp_path / "ot.bz")
    assert len(blocks) == 2
    entries = pc.read_sword_verse_index(tmp_path / "ot.bzv", blocks)
    assert len(entries) == 1 + 3 + 3
    verses = list(pc.iter_sword_verses(tmp_path))
    assert [v[1] for v in verses] == [0, 0, 1, 1]  # duplicate and empty entries dropped


def test_clean_osis_strips_markup_and_notes():
    text = pc.clean_osis(BOOKS[0][0] + BOOKS[0][1])
    assert text.splitlines()[0] == "Chapter One"
    assert "footnote" not in text and "<" not in text
    assert "In the beginning was the word.The word was good. It & the light." in text


def test_documents_never_cross_blocks_or_cut_verses(tmp_path):
    write_sword_module(tmp_path, "ot", BOOKS, wide=False)
    docs = list(pc.sword_documents(tmp_path, "web", doc_bytes=10))
    assert all(d.source == "web" for d in docs)
    assert [d.text for d in docs][-2:] == ["A second book starts here.", "And it ends here."]
    assert len({d.doc_id for d in docs}) == len(docs)


def test_dictd_numbers_and_gcide_cleaning():
    assert pc.dictd_number("A") == 0 and pc.dictd_number("BA") == 64 and pc.dictd_number("/") == 63
    raw = ('Calorific \\Cal`o*rif"ic\\, a. [L. calorificus.]\n   Possessing the quality of\n   producing heat; '
           'see {Caloric}.\n   [1913 Webster]\n\n   Caf[\'e] au lait. [1913 Webster +PJC]\n')
    assert pc.clean_gcide(raw) == ("Calorific, a. [L. calorificus.] Possessing the quality of producing heat; "
                                   "see Caloric.\nCafe au lait.")


def write_gcide(root: Path, entries: list[str]) -> None:
    """A dictd pair: ``gcide.index`` (headword, b64 offset, b64 length) and gzip ``gcide.dict.dz``."""
    def b64(n: int) -> str:
        digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        out = ""
        while True:
            out = digits[n % 64] + out
            n //= 64
            if n == 0:
                return out

    dd = root / "usr/share/dictd"
    dd.mkdir(parents=True)
    body, index = b"", ["00-database-info\tA\tB"]
    for i, e in enumerate(entries):
        data = e.encode()
        index.append(f"Head{i}\t{b64(len(body))}\t{b64(len(data))}")
        index.append(f"Alias{i}\t{b64(len(body))}\t{b64(len(data))}")  # two headwords, one entry
        body += data
    (dd / "gcide.index").write_text("\n".join(index) + "\n")
    (dd / "gcide.dict.dz").write_bytes(gzip.compress(body))


def test_end_to_end_splits_are_deterministic_and_disjoint(tmp_path, capsys):
    debs = tmp_path / "debs"
    books = [[f"Verse {b}.{v} tells of the river and the stone, number {b * 100 + v}." for v in range(40)]
             for b in range(6)]
    for pkg, (subdir, _name) in pc.SWORD_PACKAGES.items():
        (debs / f"{pkg}_1.0_all.deb").parent.mkdir(parents=True, exist_ok=True)
        (debs / f"{pkg}_1.0_all.deb").write_bytes(b"")  # present, so nothing is downloaded
        write_sword_module(debs / "unpacked" / pkg / subdir, "nt", books, wide=pkg.endswith("tdavid"))
    (debs / "dict-gcide_1.0_all.deb").write_bytes(b"")
    write_gcide(debs / "unpacked" / "dict-gcide", [f"Word{i} \\Word{i}\\, n. A thing number {i}.\n" for i in range(300)])

    out1, out2 = tmp_path / "c1", tmp_path / "c2"
    args = ["--debs", str(debs), "--doc-bytes", "300", "--val-frac", "0.2", "--test-frac", "0.2"]
    assert pc.main(["--out", str(out1), *args]) == 0
    assert pc.main(["--out", str(out2), *args]) == 0
    printed = capsys.readouterr().out
    assert "corpus sha256:" in printed and "test:" in printed
    for split in pc.SPLITS:
        assert (out1 / f"{split}.jsonl").read_bytes() == (out2 / f"{split}.jsonl").read_bytes()
    ids = {s: {json.loads(line)["id"] for line in open(out1 / f"{s}.jsonl")} for s in pc.SPLITS}
    assert all(ids[s] for s in pc.SPLITS)
    assert not (ids["train"] & ids["test"]) and not (ids["validation"] & ids["test"])
    manifest = json.loads((out1 / "manifest.json").read_text())
    assert manifest["sha256"] == pc.corpus_sha256(out1)
    sources = {json.loads(line)["source"] for s in pc.SPLITS for line in open(out1 / f"{s}.jsonl")}
    assert sources == {"tdavid", "mhcc", "web", "gcide"}


def test_split_assignment_is_a_pure_function_of_the_id():
    assert pc.assign_split("web/ot/3/10", 0.05, 0.05) == pc.assign_split("web/ot/3/10", 0.05, 0.05)
    picks = [pc.assign_split(f"doc{i}", 0.1, 0.1) for i in range(2000)]
    assert 0.07 < picks.count("test") / 2000 < 0.13
