"""Val and test images that are train images: refused, unless --allow-overlap.

A val split that lists train images under other ids is accepted by every id check, and its errors
are then measured on training data. Two entries are the same image when they have the same
`file_name`, or when their files have the same content (empty files excepted: they are unreadable, not
the same image). The content check stays cheap on iNat 2021
(2.7 M train files) by narrowing the candidates step by step: file sizes first (one stat a file,
which the reader's missing-file check has just warmed), then the SHA-256 of the first 4 KB of the
files whose size a file of the other side shares (read with readahead off), then the SHA-256 of
the whole file only for pairs whose heads agree. The same file reached twice (a hard link, a
symlink: the same device and inode) needs no hashing. Stats and reads run in a thread pool, which
hides the latency of network storage.
"""
import hashlib
import os
import stat
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from .errors import UserError

HEAD = 4096
THREADS = 8
CHUNK = 2048  # items per task: one future per file costs more than a warm stat


def _stat(path):
    """(size, (device, inode)) of a regular file, None if there is none (the reader reports it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, (st.st_dev, st.st_ino)) if stat.S_ISREG(st.st_mode) else None


def _sha256(path, limit=None):
    """SHA-256 of the first `limit` bytes of `path` (all of it with None); None if unreadable."""
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if limit is not None:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # read the head only, not the readahead window
            h.update(os.pread(fd, limit, 0))
        else:
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return h.hexdigest()


def _paths(split):
    """The split's image paths as strings (pathlib's join costs more than a warm stat)."""
    root = str(split.root)
    return [os.path.join(root, n) for n in split.file_names]


def _map(pool, fn, items):
    """[fn(x) for x in items], in chunks on the pool's threads."""
    items = list(items)
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    return [y for part in pool.map(lambda chunk: [fn(x) for x in chunk], chunks) for y in part]


def find_overlap(train, others, threads=THREADS):
    """{split name: [(row, train row, why)]} of the rows of each split in `others` that are train
    images, by file name or by content; `why` says which."""
    found = {}
    with ThreadPoolExecutor(threads) as pool:
        def hashes(paths, rows, limit):
            return dict(zip(rows, _map(pool, lambda r: _sha256(paths[r], limit), rows)))

        def group(keys):  # {key: [rows]} of rows whose key is not None
            out = defaultdict(list)
            for r, k in keys.items():
                if k is not None:
                    out[k].append(r)
            return out

        tpaths = _paths(train)
        tstat = dict(enumerate(_map(pool, _stat, tpaths)))
        t_size = group({t: s and s[0] for t, s in tstat.items()})
        t_inode = {s[1]: t for t, s in tstat.items() if s is not None}
        t_head, t_full = {}, {}  # train row -> hash, computed once for all splits
        names = {n: t for t, n in enumerate(train.file_names)}
        for split in others:
            hits = {r: (names[n], "the same file_name") for r, n in enumerate(split.file_names) if n in names}
            paths = _paths(split)
            ostat = dict(enumerate(_map(pool, _stat, paths)))
            for r, s in ostat.items():
                if r not in hits and s is not None and s[1] in t_inode:
                    hits[r] = (t_inode[s[1]], "the same file (same device and inode)")
            # sizes, then the first 4 KB, then the whole file: each step only where the last agreed;
            # empty files are no image (unreadable, counted by --max-bad-images), not one image twice
            rows = [r for r, s in ostat.items() if r not in hits and s is not None and s[0] > 0 and s[0] in t_size]
            head = hashes(paths, rows, HEAD)
            peers = {t for r in rows for t in t_size[ostat[r][0]]}
            t_head.update(hashes(tpaths, sorted(peers - t_head.keys()), HEAD))
            by_head = group({t: t_head[t] and (tstat[t][0], t_head[t]) for t in peers})
            rows = [r for r in rows if head[r] is not None and (ostat[r][0], head[r]) in by_head]
            full = hashes(paths, rows, None)
            peers = {t for r in rows for t in by_head[ostat[r][0], head[r]]}
            t_full.update(hashes(tpaths, sorted(peers - t_full.keys()), None))
            by_full = group({t: t_full[t] for t in peers})
            for r in rows:
                if full[r] is not None and full[r] in by_full:
                    hits[r] = (by_full[full[r]][0], f"the same content (sha256 {full[r][:16]}...)")
            found[split.name] = sorted((r, t, why) for r, (t, why) in hits.items())
    return found


def check_overlap(splits, allow=False):
    """Refuse val and test images that are train images (one line naming the first pair of entries),
    or with `allow` (--allow-overlap) say how many there are and go on."""
    train = splits.get("train")
    others = [splits[n] for n in ("val", "test") if n in splits]
    if train is None or not others:
        return
    for name, hits in find_overlap(train, others).items():
        if not hits:
            continue
        split = splits[name]
        r, t, why = hits[0]
        line = (f"{split.json_path}: {len(hits)} {name} images are train images (first: image id {split.image_ids[r]} "
                f"{split.file_names[r]} is {train.json_path.name} image id {train.image_ids[t]} {train.file_names[t]}: {why})")
        if not allow:
            raise UserError(f"{line}; its errors would be measured on training data: pass --allow-overlap if you mean it")
        print(f"--allow-overlap: {line}", flush=True)
