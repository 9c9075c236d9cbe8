"""A split's file names as one bytes buffer and an offsets array, not a list of str.

Forked DataLoader workers share the parent's memory page by page until a page is written. Reading
a str from a Python list writes its reference count, so over an epoch every worker copies the
pages of millions of names (the growth of worker memory seen with long lists); here a name is
decoded from two objects that are only read. Indexing, iterating, len and == with a list of str
behave as the list did. Names are stored as UTF-8 with 'surrogatepass', so every str, even one
holding a lone surrogate, comes back exactly as it went in.
"""
import operator

import numpy as np

CHUNK = 65_536  # names encoded at a time: a bounded list of bytes objects beside the buffer


class FileNames:
    """`names[i]` is the str of row i; `data` (bytes) holds them all, `offsets` (int64, N + 1)
    where each starts."""

    def __init__(self, names=()):
        names = list(names) if not isinstance(names, list) else names
        lengths, parts = np.zeros(len(names) + 1, np.int64), []
        for s in range(0, len(names), CHUNK):
            encoded = [n.encode("utf-8", "surrogatepass") for n in names[s : s + CHUNK]]
            lengths[s + 1 : s + 1 + len(encoded)] = [len(e) for e in encoded]
            parts.append(b"".join(encoded))
        self.data = b"".join(parts)
        self.offsets = np.cumsum(lengths)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"file name {i} of {n}")
        return self.data[self.offsets[i] : self.offsets[i + 1]].decode("utf-8", "surrogatepass")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other):
        if isinstance(other, FileNames):
            return self.data == other.data and np.array_equal(self.offsets, other.offsets)
        if isinstance(other, list):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        head = ", ".join(repr(n) for n in self[:3])
        return f"FileNames([{head}{', ...' if len(self) > 3 else ''}], {len(self)} names)"

    def first_bytes(self):
        """int16 (N,): the first byte of each name, -1 for an empty name."""
        starts, ends = self.offsets[:-1], self.offsets[1:]
        first = np.full(len(self), -1, np.int16)
        some = ends > starts
        first[some] = np.frombuffer(self.data, np.uint8)[starts[some]]
        return first

    def rows_holding(self, needles):
        """Sorted rows whose name holds any of the byte strings `needles` (bytes.find: no copy)."""
        found = []
        for needle in needles:
            at = self.data.find(needle)
            while at >= 0:
                found.append(at)
                at = self.data.find(needle, at + 1)
        return np.unique(np.searchsorted(self.offsets, np.asarray(found, np.int64), side="right") - 1)
