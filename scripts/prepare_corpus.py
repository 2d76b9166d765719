#!/usr/bin/env python
"""Build the offline English corpus (train / validation / test JSONL) for hf-prune.

Nothing can be fetched from the Hugging Face Hub where this project is built, so the reference
model is trained on public-domain text that ships as Debian packages:

* ``sword-comm-tdavid`` -- C. H. Spurgeon, *The Treasury of David* (Victorian prose commentary)
* ``sword-comm-mhcc``   -- Matthew Henry's *Concise Commentary* (18th-century prose)
* ``sword-text-web``    -- World English Bible (modern public-domain translation)
* ``dict-gcide``        -- Webster 1913 / GCIDE definitions (a second register: dictionary prose)

KJV is deliberately left out: it is the same text as WEB in older English and would leak
near-duplicates across splits.

The packages are fetched with ``apt-get download`` (no root needed) and unpacked with
``dpkg-deb -x``; the SWORD ``zText``/``zCom`` modules are read in pure Python (a ``.?zs`` block
index, zlib ``.?zz`` blocks and a ``.?zv`` verse index) so libsword is not needed.

Each source is cut into *documents* (passages of consecutive verses / dictionary entries, about
``--doc-bytes`` of clean text, never split inside a verse or an entry). Every document goes
whole into exactly one split, chosen by a hash of its id, so the split is deterministic and the
test split is never seen by training or calibration.

Usage::

    python scripts/prepare_corpus.py                 # -> data/corpus/{train,validation,test}.jsonl
    python scripts/prepare_corpus.py --out DIR --debs DIR_WITH_DEBS
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SWORD_PACKAGES = {
    # package -> (module data dir inside the package, human-readable name)
    "sword-comm-tdavid": ("usr/share/sword/modules/comments/zcom/tdavid", "tdavid"),
    "sword-comm-mhcc": ("usr/share/sword/modules/comments/zcom/mhcc", "mhcc"),
    "sword-text-web": ("usr/share/sword/modules/texts/ztext/engWEB2015eb", "web"),
}
GCIDE_PACKAGE = "dict-gcide"
GCIDE_FILES = ("usr/share/dictd/gcide.index", "usr/share/dictd/gcide.dict.dz")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Document:
    """A whole passage that goes into exactly one split."""

    source: str
    doc_id: str
    text: str


# --------------------------------------------------------------------------------------------
# Fetching packages
# --------------------------------------------------------------------------------------------


def fetch_packages(packages: Iterable[str], debs_dir: Path) -> dict[str, Path]:
    """Download (if absent) and unpack each Debian package; return package -> unpacked root.

    ``apt-get download`` needs no root and pulls no dependencies; if it finds nothing the apt
    lists are probably empty, so the caller is told to run ``apt-get update`` once.
    """
    debs_dir.mkdir(parents=True, exist_ok=True)
    roots: dict[str, Path] = {}
    for pkg in packages:
        debs = sorted(debs_dir.glob(f"{pkg}_*.deb"))
        if not debs:
            if shutil.which("apt-get") is None:
                raise SystemExit(f"error: {pkg} .deb not in {debs_dir} and apt-get is unavailable")
            proc = subprocess.run(["apt-get", "download", pkg], cwd=debs_dir, capture_output=True, text=True)
            debs = sorted(debs_dir.glob(f"{pkg}_*.deb"))
            if proc.returncode != 0 or not debs:
                raise SystemExit(
                    f"error: `apt-get download {pkg}` failed ({proc.stderr.strip()[-200:]}); "
                    "run `apt-get update` once, or put the .deb into " + str(debs_dir)
                )
        root = debs_dir / "unpacked" / pkg
        if not root.exists():
            root.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
        roots[pkg] = root
    return roots


# --------------------------------------------------------------------------------------------
# SWORD zText / zCom reader
# --------------------------------------------------------------------------------------------


def read_sword_blocks(prefix: Path) -> list[bytes]:
    """Decompress every block of a SWORD compressed module file set (``prefix`` + ``s``/``z``).

    ``.?zs`` holds one little-endian ``(offset, compressed_size, uncompressed_size)`` uint32
    triple per block; ``.?zz`` holds the zlib streams. A block is a whole book or chapter.
    """
    index = Path(str(prefix) + "s").read_bytes()
    data = Path(str(prefix) + "z").read_bytes()
    blocks = []
    for i in range(len(index) // 12):
        offset, csize, _usize = struct.unpack_from("<III", index, i * 12)
        blocks.append(zlib.decompress(data[offset : offset + csize]) if csize else b"")
    return blocks


def read_sword_verse_index(path: Path, blocks: list[bytes]) -> list[tuple[int, int, int]]:
    """Read the ``.?zv`` verse index as ``(block, offset, size)`` entries.

    zText/zCom use 10-byte entries (uint32, uint32, uint16); the ``*4`` drivers use 12-byte
    entries (uint32 size). The conf files are not reliable about which one a module uses
    (mhcc says zCom4 but has 10-byte entries), so the width that yields entries pointing inside
    their blocks wins.
    """
    raw = path.read_bytes()
    for width, fmt in ((12, "<III"), (10, "<IIH")):
        if len(raw) % width:
            continue
        entries = [struct.unpack_from(fmt, raw, i * width) for i in range(len(raw) // width)]
        if all(size == 0 or (blk < len(blocks) and off + size <= len(blocks[blk])) for blk, off, size in entries):
            return entries
    raise ValueError(f"{path}: verse index matches neither the 10- nor the 12-byte layout")


def iter_sword_verses(module_dir: Path) -> Iterator[tuple[str, int, int, str]]:
    """Yield ``(testament, block, entry, raw_osis)`` for every distinct non-empty verse/entry.

    Commentaries link one comment from every verse it covers ("Verses 29-30"), so entries that
    point at an already-seen span are skipped; otherwise such text would be duplicated, and
    could even land in two splits.
    """
    for testament in ("ot", "nt"):
        for vfile in sorted(module_dir.glob(f"{testament}.?zv")):
            prefix = vfile.with_suffix(vfile.suffix[:-1])  # ot.bzv -> ot.bz
            blocks = read_sword_blocks(prefix)
            seen: set[tuple[int, int, int]] = set()
            for n, (blk, off, size) in enumerate(read_sword_verse_index(vfile, blocks)):
                if size and (blk, off, size) not in seen:
                    seen.add((blk, off, size))
                    yield testament, blk, n, blocks[blk][off : off + size].decode("utf-8", "replace")


_NOTE_RE = re.compile(r"<note\b[^>]*>.*?</note>", re.S)
_BREAK_TAG_RE = re.compile(r"<(?:/?(?:title|l|lg|row|p|item|list|table|head)\b|div\b|lb\b|chapter\b)[^>]*>", re.S)
_TAG_RE = re.compile(r"<[^>]*>")


def clean_osis(raw: str) -> str:
    """Strip OSIS markup to plain prose: drop footnotes, turn block tags into line breaks.

    Footnotes and cross references are removed because they interrupt sentences; titles and
    table cells stay (they are real text), each on its own line.
    """
    text = _NOTE_RE.sub(" ", raw)
    text = re.sub(r"</cell>\s*<cell\b[^>]*>", " ", text)
    text = _BREAK_TAG_RE.sub("\n", text)
    text = _TAG_RE.sub("", text)
    text = html.unescape(text)
    return normalize_lines(text)


def normalize_lines(text: str) -> str:
    """Collapse runs of spaces, trim lines and drop empty ones."""
    lines = (re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def sword_documents(module_dir: Path, source: str, doc_bytes: int) -> Iterator[Document]:
    """Group consecutive verses of one block (book/chapter) into documents of ~``doc_bytes``.

    A block is never mixed into another block's document, and a verse is never cut.
    """
    current: list[str] = []
    size = 0
    key: tuple[str, int] | None = None
    first = 0

    def flush() -> Iterator[Document]:
        if current and key is not None:
            yield Document(source, f"{source}/{key[0]}/{key[1]}/{first}", "\n".join(current))

    for testament, blk, entry, raw in iter_sword_verses(module_dir):
        text = clean_osis(raw)
        if not text:
            continue
        if (testament, blk) != key or size >= doc_bytes:
            yield from flush()
            current, size, key, first = [], 0, (testament, blk), entry
        current.append(text)
        size += len(text.encode()) + 1
    yield from flush()


# --------------------------------------------------------------------------------------------
# GCIDE (dictd) reader
# --------------------------------------------------------------------------------------------

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def dictd_number(code: str) -> int:
    """Decode dictd's base64 integers (big-endian digits, no padding) used in ``.index`` files."""
    value = 0
    for ch in code:
        value = value * 64 + _B64[ch]
    return value


def iter_gcide_entries(index_path: Path, dict_path: Path) -> Iterator[str]:
    """Yield the raw text of every distinct dictionary entry, in file order.

    Many headwords point at the same entry; the ``00-database-*`` pseudo-entries are licence
    and metadata text and are skipped.
    """
    spans = set()
    for line in index_path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and not parts[0].startswith("00-"):
            spans.add((dictd_number(parts[1]), dictd_number(parts[2])))
    data = gzip.open(dict_path).read()  # dictzip is gzip-compatible
    for offset, length in sorted(spans):
        yield data[offset : offset + length].decode("utf-8", "replace")


_GCIDE_SOURCE_RE = re.compile(r"[ \t]*\[[^\]\n]*(?:Webster|WordNet|PJC|Century|Chambers)[^\]\n]*\]")
_GCIDE_PRON_RE = re.compile(r"\s*\\([^\\\n]*)\\")
_GCIDE_ACCENT_RE = re.compile(r"\[[`'\"=.^~,:]+([A-Za-z]{1,2})\]")
_GCIDE_CODE_RE = re.compile(r"\[(?:deg|frac\w+|root|sect|para|cre|prime|dprime|ddag|dag|asl|asterism|ait|ae|AE|oe|OE)\]")


def clean_gcide(raw: str) -> str:
    """Turn a dictd GCIDE entry into plain text.

    Drops the ``[1913 Webster]`` provenance lines and the ``\\Pro*nun"ci*a`tion\\`` markup,
    resolves accent codes (``[`e]`` -> ``e``) and cross-reference braces (``{word}`` -> word),
    and re-flows the hard-wrapped definition lines into paragraphs.
    """
    text = _GCIDE_SOURCE_RE.sub("", raw)
    text = _GCIDE_PRON_RE.sub("", text)
    text = _GCIDE_ACCENT_RE.sub(r"\1", text)
    text = _GCIDE_CODE_RE.sub("", text)
    text = text.replace("{", "").replace("}", "")
    paragraphs = re.split(r"\n\s*\n", text)
    flowed = (re.sub(r"\s+", " ", p).strip() for p in paragraphs)
    return "\n".join(p for p in flowed if p)


def gcide_documents(index_path: Path, dict_path: Path, doc_bytes: int, max_bytes: int | None) -> Iterator[Document]:
    """Group consecutive dictionary entries into documents of ~``doc_bytes``.

    ``max_bytes`` keeps a deterministic, evenly spread subset (every k-th document) so the
    dictionary register does not swamp the prose.
    """
    docs: list[Document] = []
    current: list[str] = []
    size = 0
    for n, raw in enumerate(iter_gcide_entries(index_path, dict_path)):
        text = clean_gcide(raw)
        if not text:
            continue
        if size >= doc_bytes:
            docs.append(Document("gcide", f"gcide/{n}", "\n".join(current)))
            current, size = [], 0
        current.append(text)
        size += len(text.encode()) + 1
    if current:
        docs.append(Document("gcide", "gcide/end", "\n".join(current)))
    total = sum(len(d.text.encode()) for d in docs)
    if max_bytes is not None and total > max_bytes:
        keep = max(1, round(len(docs) * max_bytes / total))
        step = len(docs) / keep
        docs = [docs[int(i * step)] for i in range(keep)]
    yield from docs


# --------------------------------------------------------------------------------------------
# Splitting and writing
# --------------------------------------------------------------------------------------------


def assign_split(doc_id: str, val_frac: float, test_frac: float) -> str:
    """Deterministic split from a hash of the document id (independent of order and machine)."""
    u = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    if u < test_frac:
        return "test"
    if u < test_frac + val_frac:
        return "validation"
    return "train"


def write_splits(docs: Iterable[Document], out: Path, val_frac: float, test_frac: float) -> dict[str, dict[str, int]]:
    """Write ``{split}.jsonl`` (one ``{"text", "source", "id"}`` object per document).

    Returns per-split byte and document counts per source, for the manifest.
    """
    out.mkdir(parents=True, exist_ok=True)
    handles = {s: open(out / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}
    stats: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    try:
        for doc in docs:
            split = assign_split(doc.doc_id, val_frac, test_frac)
            handles[split].write(json.dumps({"text": doc.text, "source": doc.source, "id": doc.doc_id}) + "\n")
            st = stats[split]
            st[f"{doc.source}_bytes"] = st.get(f"{doc.source}_bytes", 0) + len(doc.text.encode())
            st[f"{doc.source}_docs"] = st.get(f"{doc.source}_docs", 0) + 1
    finally:
        for h in handles.values():
            h.close()
    return stats


def corpus_sha256(out: Path) -> str:
    """One hash over the three split files, recorded beside every model trained on them."""
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(split.encode())
        h.update((out / f"{split}.jsonl").read_bytes())
    return h.hexdigest()


def all_documents(roots: dict[str, Path], doc_bytes: int, gcide_max_bytes: int | None) -> Iterator[Document]:
    """Every document of every available source, in a fixed order."""
    for pkg, (subdir, name) in SWORD_PACKAGES.items():
        if pkg in roots:
            yield from sword_documents(roots[pkg] / subdir, name, doc_bytes)
    if GCIDE_PACKAGE in roots:
        index, dz = (roots[GCIDE_PACKAGE] / f for f in GCIDE_FILES)
        yield from gcide_documents(index, dz, doc_bytes, gcide_max_bytes)


def sample_documents(split_file: Path, max_bytes: int, sources: list[str]) -> list[dict]:
    """A deterministic sample of whole documents of one split, every source in equal share.

    Documents are taken in the order of a hash of their id (independent of file order and machine),
    each source adding documents until it has its share of ``max_bytes``; the sample is written in
    that order. Used for the small calibration and held-out files that ship inside the package.
    """
    rows = [json.loads(line) for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda row: hashlib.sha256(f"package-sample:{row['id']}".encode()).hexdigest())
    share = max_bytes // len(sources)
    taken: dict[str, int] = dict.fromkeys(sources, 0)
    sample = []
    for row in rows:
        size = len(row["text"].encode())
        if row["source"] in taken and taken[row["source"]] + size <= share:
            taken[row["source"]] += size
            sample.append(row)
    return sample


def write_package_sample(corpus: Path, out: Path, calibration_bytes: int, heldout_bytes: int) -> dict[str, dict]:
    """``calibration.jsonl`` (from train) and ``heldout.jsonl`` (from test) for ``hf_prune/data``."""
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted({json.loads(line)["source"] for line in (corpus / "test.jsonl").open(encoding="utf-8")})
    summary = {}
    for name, split, budget in (("calibration", "train", calibration_bytes), ("heldout", "test", heldout_bytes)):
        rows = sample_documents(corpus / f"{split}.jsonl", budget, sources)
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        summary[name] = {"split": split, "documents": len(rows), "text_bytes": sum(len(r["text"].encode()) for r in rows),
                         "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/corpus"), help="output dir for the JSONL splits")
    p.add_argument("--debs", type=Path, default=Path("data/debs"), help="where .deb files are downloaded/unpacked")
    p.add_argument("--no-gcide", action="store_true", help="prose only (skip the Webster 1913 dictionary)")
    p.add_argument("--gcide-max-mb", type=float, default=12.0, help="cap on dictionary text (MB); <=0 keeps all")
    p.add_argument("--doc-bytes", type=int, default=4096, help="target size of one document (passage)")
    p.add_argument("--val-frac", type=float, default=0.05)
    p.add_argument("--test-frac", type=float, default=0.05)
    p.add_argument("--package-sample", type=Path, default=None, metavar="DIR",
                   help="also write the small calibration (train) and held-out (test) samples that ship inside "
                        "the package, e.g. hf_prune/data")
    p.add_argument("--sample-kb", type=int, nargs=2, default=(240, 200), metavar=("CALIBRATION", "HELDOUT"),
                   help="text size of the two package samples, in KB")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    packages = list(SWORD_PACKAGES) + ([] if args.no_gcide else [GCIDE_PACKAGE])
    roots = fetch_packages(packages, args.debs)
    cap = int(args.gcide_max_mb * 1e6) if args.gcide_max_mb > 0 else None
    stats = write_splits(all_documents(roots, args.doc_bytes, cap), args.out, args.val_frac, args.test_frac)
    digest = corpus_sha256(args.out)
    sizes = {s: (args.out / f"{s}.jsonl").stat().st_size for s in SPLITS}
    text_bytes = {s: sum(v for k, v in stats[s].items() if k.endswith("_bytes")) for s in SPLITS}
    manifest = {
        "packages": {p: sorted(x.name for x in args.debs.glob(f"{p}_*.deb")) for p in packages},
        "args": {k: str(v) for k, v in vars(args).items()},
        "text_bytes": text_bytes,
        "file_bytes": sizes,
        "per_source": stats,
        "sha256": digest,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for s in SPLITS:
        docs = sum(v for k, v in stats[s].items() if k.endswith("_docs"))
        print(f"{s:>10}: {text_bytes[s]:>11,d} text bytes  {docs:>6,d} docs  ({args.out / (s + '.jsonl')})")
    for src in sorted({k[:-6] for s in SPLITS for k in stats[s] if k.endswith("_bytes")}):
        print(f"{src:>10}: " + "  ".join(f"{s}={stats[s].get(src + '_bytes', 0):,d}" for s in SPLITS))
    print(f"corpus sha256: {digest}")
    if args.package_sample is not None:
        summary = write_package_sample(args.out, args.package_sample, *(kb * 1000 for kb in args.sample_kb))
        (args.package_sample / "provenance.json").write_text(json.dumps(
            {"corpus_sha256": digest, "command": "python scripts/prepare_corpus.py --package-sample "
             f"{args.package_sample}", "samples": summary}, indent=2) + "\n")
        for name, row in summary.items():
            print(f"package sample {name}: {row['documents']} documents, {row['text_bytes']:,d} text bytes "
                  f"from the {row['split']} split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
