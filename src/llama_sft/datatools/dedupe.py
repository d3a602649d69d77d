"""`data dedupe`: drop exact duplicates (normalized content hash) and near duplicates (MinHash).

The first record of a cluster is kept; every later member is dropped and counted, with the id
it duplicates. Exact: the same roles and contents after lowercasing and collapsing whitespace.
Near: datasketch MinHash over word n-grams of the dialogue from the first user turn (the first
user turn and reply, and further turns while under `near_chars` characters; the system prompt
is left out because many records share one). LSH banding (b and r as datasketch's MinHashLSH
chooses them for the threshold) proposes candidates; a candidate counts only when the MinHash
estimate of Jaccard similarity is at least the threshold.

Memory grows with the records kept, unlike the other tools, but compactly: per kept record a
content-hash entry and one entry per LSH band in open-addressing arrays (17 to 34 bytes each)
and its id; MinHash signatures go to an unlinked temporary file (4 bytes per permutation per
kept record on disk) and are read back only for candidates. The benchmark reports the growth.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from array import array
from dataclasses import dataclass

import numpy as np

from .records import Chat, to_sharegpt
from .stream import Run


@dataclass
class DedupeOptions:
    threshold: float | None = 0.8  # near-duplicate Jaccard threshold; None: exact only
    num_perm: int = 128
    ngram: int = 3  # words per shingle
    near_chars: int = 2000
    seed: int = 1  # MinHash permutation seed

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 16 or self.ngram < 1 or self.near_chars < 1:
            raise ValueError("--num-perm must be >= 16, --ngram and --near-chars >= 1")


@dataclass(frozen=True)
class Match:
    kind: str  # exact | near
    kept: int  # ordinal of the kept record it duplicates
    similarity: float


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def content_key(chat: Chat) -> int:
    """64-bit hash of the roles and normalized contents, system included."""
    joined = "\x1e".join(f"{t.role}\x1f{_normal(t.content)}" for t in chat.turns)
    return int.from_bytes(
        hashlib.blake2b(joined.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


def near_text(chat: Chat, near_chars: int) -> str:
    dialogue = chat.dialogue
    start = next((n for n, t in enumerate(dialogue) if t.role == "user"), 0)
    out, size = [], 0
    for turn in dialogue[start:]:
        out.append(turn.content)
        size += len(turn.content)
        if size >= near_chars:
            break
    return _normal("\n".join(out))[:near_chars]


def shingles(text: str, n: int) -> list[bytes]:
    words = text.split()
    if len(words) <= n:
        return [" ".join(words).encode("utf-8", "surrogatepass")] if words else []
    return list(
        {" ".join(words[i : i + n]).encode("utf-8", "surrogatepass") for i in range(len(words) - n + 1)}
    )


_MASK64 = (1 << 64) - 1


class HashIndex:
    """64-bit key -> record ordinal, open addressing with linear probing in two stdlib arrays.

    17 to 34 bytes an entry where a dict of Python ints takes about 100; dedupe holds one entry
    per LSH band plus one content hash per kept record, so this is most of its memory.
    """

    def __init__(self, capacity: int = 1 << 12):
        self.size = 0
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self._keys = array("Q", bytes(8 * capacity))  # 0 marks an empty slot
        self._values = array("i", bytes(4 * capacity))
        self._mask = capacity - 1

    def __len__(self) -> int:
        return self.size

    def get(self, key: int) -> int:
        """The ordinal stored for `key`, or -1."""
        key = (key & _MASK64) or 1
        keys, mask = self._keys, self._mask
        i = key & mask
        while True:
            found = keys[i]
            if found == key:
                return self._values[i]
            if found == 0:
                return -1
            i = (i + 1) & mask

    def setdefault(self, key: int, value: int) -> int:
        """Store `value` unless `key` is present; returns the stored ordinal."""
        key = (key & _MASK64) or 1
        if (self.size + 1) * 10 > len(self._keys) * 7:
            old_keys, old_values = self._keys, self._values
            self._alloc(len(old_keys) * 2)
            self.size = 0
            for k, v in zip(old_keys, old_values, strict=True):
                if k:
                    self._put(k, v)
        return self._put(key, value)

    def _put(self, key: int, value: int) -> int:
        keys, mask = self._keys, self._mask
        i = key & mask
        while True:
            found = keys[i]
            if found == key:
                return self._values[i]
            if found == 0:
                keys[i], self._values[i] = key, value
                self.size += 1
                return value
            i = (i + 1) & mask


class PackedStrings:
    """Append-only strings in one bytearray (ids of kept records): about 8 bytes plus the text each."""

    def __init__(self):
        self._data = bytearray()
        self._ends = array("Q")

    def append(self, text: str) -> None:
        self._data += text.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._data))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        start = self._ends[i - 1] if i else 0
        return self._data[start : self._ends[i]].decode("utf-8", "surrogatepass")


class SignatureFile:
    """MinHash signatures of kept records in an unlinked temporary file, read back only for LSH
    candidates: they stay in the page cache, not in this process's memory."""

    def __init__(self, num_perm: int, dtype=np.uint32):
        self._file = tempfile.TemporaryFile(prefix="llama-sft-minhash-")
        self._dtype = np.dtype(dtype)
        self._width = num_perm * self._dtype.itemsize

    def write(self, ordinal: int, signature: np.ndarray) -> None:
        os.pwrite(
            self._file.fileno(), signature.astype(self._dtype, copy=False).tobytes(), ordinal * self._width
        )

    def read(self, ordinal: int) -> np.ndarray:
        return np.frombuffer(
            os.pread(self._file.fileno(), self._width, ordinal * self._width), dtype=self._dtype
        )

    def close(self) -> None:
        self._file.close()


class Deduper:
    def __init__(self, options: DedupeOptions):
        self.options = options
        self.exact = HashIndex()
        self.kept_ids = PackedStrings()
        self.near = options.threshold is not None
        if self.near:
            try:
                from datasketch import MinHash, MinHashLSH
            except ImportError:
                raise ImportError(
                    "near-duplicate detection needs datasketch: pip install 'llama-sft[data]' "
                    "(or pass --exact-only)"
                ) from None
            self._minhash = MinHash
            # CRC-32 is enough here: the affine32 scheme mixes the input hash before permuting, and it
            # is several times faster than the default SHA-1.
            self._template = MinHash(num_perm=options.num_perm, seed=options.seed, hashfunc=zlib.crc32)
            lsh = MinHashLSH(threshold=options.threshold, num_perm=options.num_perm)
            self.bands, self.rows = lsh.b, lsh.r
            self.buckets = HashIndex()  # (band, band hash) -> first kept record in that bucket
            self.signatures = SignatureFile(options.num_perm)

    def signature(self, chat: Chat) -> np.ndarray | None:
        grams = shingles(near_text(chat, self.options.near_chars), self.options.ngram)
        if not grams:
            return None
        minhash = self._minhash(
            num_perm=self.options.num_perm,
            permutations=self._template.permutations,
            scheme="affine32",
            hashfunc=zlib.crc32,
        )
        minhash.update_batch(grams)
        return minhash.hashvalues

    def check(self, chat: Chat) -> Match | None:
        """The record this one duplicates, or None (and it is kept and indexed)."""
        key = content_key(chat)
        kept = self.exact.get(key)
        if kept >= 0:
            return Match("exact", kept, 1.0)
        ordinal = len(self.kept_ids)
        signature = self.signature(chat) if self.near else None
        band_keys: list[int] = []
        if signature is not None:
            r = self.rows
            # hash() of bytes is salted per process; only equality matters here, never the value.
            band_keys = [
                hash(signature[b * r : (b + 1) * r].tobytes() + bytes((b,))) for b in range(self.bands)
            ]
            candidates = sorted({c for c in map(self.buckets.get, band_keys) if c >= 0})
            best, best_similarity = -1, -1.0
            for candidate in candidates:
                similarity = float(np.mean(self.signatures.read(candidate) == signature))
                if similarity > best_similarity:
                    best, best_similarity = candidate, similarity
            if best >= 0 and best_similarity >= self.options.threshold:
                return Match("near", best, best_similarity)
        self.exact.setdefault(key, ordinal)
        self.kept_ids.append(chat.id)
        if signature is not None:
            self.signatures.write(ordinal, signature)
            for band_key in band_keys:
                self.buckets.setdefault(band_key, ordinal)
        return None

    def close(self) -> None:
        if self.near:
            self.signatures.close()


def run_dedupe(run: Run, options: DedupeOptions, clusters_path: str | None = None, largest: int = 5) -> int:
    deduper = Deduper(options)
    summary = run.summary
    clusters_out = run.add_writer(clusters_path) if clusters_path else None
    clusters: dict[int, list] = {}  # kept ordinal -> [members, up to 3 member ids]
    for raw in run.raw_records():
        chat, notes = run.parse(raw)
        if chat is None:
            continue
        match = deduper.check(chat)
        if match is None:
            for reason in notes:
                summary.note("changed", reason, chat.id)
            summary.changed += bool(notes)
            run.write(to_sharegpt(chat))
            continue
        kept_id = deduper.kept_ids[match.kept]
        summary.note("dropped", f"{match.kind}_duplicate", f"{chat.id} (= {kept_id})")
        cluster = clusters.setdefault(match.kept, [0, []])
        cluster[0] += 1
        if len(cluster[1]) < 3:
            cluster[1].append(chat.id)
        if clusters_out is not None:
            clusters_out.write(
                {
                    "kept": kept_id,
                    "duplicate": chat.id,
                    "kind": match.kind,
                    "similarity": round(match.similarity, 4),
                }
            )
    deduper.close()
    top = sorted(clusters.items(), key=lambda kv: (-kv[1][0], kv[0]))[:largest]
    summary.extra["dedupe"] = {
        "clusters": len(clusters),
        "exact_duplicates": summary.count("exact_duplicate"),
        "near_duplicates": summary.count("near_duplicate"),
        "largest_clusters": [
            {"kept": deduper.kept_ids[k], "size": 1 + n, "duplicates": ids} for k, (n, ids) in top
        ],
        "threshold": options.threshold,
        "num_perm": options.num_perm,
        "bands": getattr(deduper, "bands", None),
        "rows_per_band": getattr(deduper, "rows", None),
    }
    code = run.finish()
    if clusters and not run.quiet:
        from rich.console import Console

        console = Console(stderr=True, highlight=False)
        console.print(f"{len(clusters):,} cluster(s); largest:", markup=False)
        for entry in summary.extra["dedupe"]["largest_clusters"]:
            console.print(
                f"  {entry['size']} records: keeps {entry['kept']}, drops {', '.join(entry['duplicates'])}"
                + (" ..." if entry["size"] - 1 > len(entry["duplicates"]) else ""),
                markup=False,
            )
    return code
