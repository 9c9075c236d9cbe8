"""What grows with the dataset: `make bench-scale` (CPU). At its default sizes on 2 cores: about
9 min to make the datasets (about 3.6 million hard links, some 0.1 ms each; kept in --work for a
rerun; `--make-only` does it apart; 556 s on 2026-12-02, shared cores), then 505 s for every part
(2026-12-03, nothing else running; docs/performance.md).

    python3 bench/scale.py                      # iNat 2019, 2021-mini, 2021 -> bench/results.json (scale_* keys)
    python3 bench/scale.py --smoke              # tiny sizes, a few minutes: the harness itself

Makes synthetic datasets at the official sizes (train / val / test images, classes):
  inat2019       265,213 / 3,030 / 35,350, 1,010: the 2019 layout and json (train_val2019/<Super>/<id>/<md5>.jpg)
  inat2021-mini  500,000 / 100,000 / 500,000, 10,000 } the 2021 json (train_mini.json, train.json, val.json,
  inat2021       2,686,843 / 100,000 / 500,000, 10,000 } public_test.json, with date and location per image),
                 made into this project's layout by `data/prepare.py inat2021 / inat2021-mini`
json at full size, every image a hard link of one of a few tiny JPEGs, so the disk holds the
links' directory entries only (kept in --work; a rerun reuses them). Then measures, each in a
process of its own (bench/scale_probe.py through bench/peak_rss.py: wall time, peak resident memory):
  prepare         data/prepare.py on the 2021 json, beside json.load + json.dump of the same files
  load            fgvc.annotations.load_dataset without and with the file check, beside json.load
  localize        coarse/train.py --localize-only (random resnet18, 32 px) on two train sizes, one
                  process and 2-process torchrun (gloo): bytes per image of the peak, per process
  masks           writing and reading a masks file (64 x 64) of two sizes: bytes per image
  workers         the fine stage's dataset (packed masks, crops) over random train rows with 2 loader
                  processes: each loader's private memory, first batch to last (FileNames and, for
                  comparison, the list of str the split held before)
  test            test.py --model coarse (whole images, 2 loaders) on two test-set sizes
Keys written to bench/results.json (the other keys of the file are kept):
  scale_load_vs_json_time, scale_load_vs_json_rss   load_dataset (no file check) / json.load, at iNat 2021
  scale_prepare_vs_json_time                        prepare.py inat2021 / (json.load + json.dump), at iNat 2021
  scale_localize_bytes_per_image                    the larger slope of the peak, one process or a torchrun rank
  scale_masks_bytes_per_image                       the larger slope, write or read
  scale_worker_rss_growth                           MB a loader process grew over the pass (FileNames)
  scale_test_rss_ratio                              test.py peak (with its loaders), larger / smaller test set
  scale (a dict)                                    every measurement, the slopes and the projections at 2.7 M images
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

import cv2
import numpy as np

from bench.memory import CATEGORY_IDS, make_checkpoint, peak_rss_mb
from bench.run import check, cpu_model

SIZES = {  # train, val, test images, classes: the official counts
    "inat2019": (265_213, 3_030, 35_350, 1_010),
    "inat2021-mini": (500_000, 100_000, 500_000, 10_000),
    "inat2021": (2_686_843, 100_000, 500_000, 10_000),
}
SMOKE = {"inat2019": (400, 30, 60, 10), "inat2021-mini": (500, 100, 100, 10), "inat2021": (1_200, 100, 100, 10)}
PROJECT_TO = 2_686_843  # images: iNat 2021's train split
LINKS_PER_FILE = 60_000  # ext4 allows 65,000 hard links to one file
TARGETS = {  # key: (comparison, bound)
    "scale_load_vs_json_time": ("<=", 1.0),
    "scale_load_vs_json_rss": ("<=", 0.6),
    "scale_prepare_vs_json_time": ("<=", 2.0),
    "scale_localize_bytes_per_image": ("<=", 1024),
    "scale_masks_bytes_per_image": ("<=", 1024),
    "scale_worker_rss_growth": ("<=", 32),
    "scale_test_rss_ratio": ("<=", 1.3),
}


def get_args_parser():
    p = argparse.ArgumentParser(description="What grows with the dataset: reader, prepare, localization, masks, loaders, test.py")
    p.add_argument("--work", default=str(ROOT / "bench" / "work" / "scale"), help="scratch folder, kept for a rerun (default: bench/work/scale)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results.json"), help="results file; its other keys are kept (default: bench/results.json)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness, measures nothing worth keeping (writes --out only if given)")
    p.add_argument("--localize-sizes", type=int, nargs=2, default=(24_000, 100_000), help="train images of the two localizations; 4000 24000 were too close for a shared machine's noise (default: 24000 100000)")
    p.add_argument("--masks-sizes", type=int, nargs=2, default=(100_000, 400_000), help="masks of the two masks files (default: 100000 400000)")
    p.add_argument("--worker-rows", type=int, default=20_000, help="random train rows of iNat 2021 the loaders read (default: 20000)")
    p.add_argument("--test-sizes", type=int, nargs=2, default=(10_000, 100_000), help="test images of the two test.py runs (default: 10000 100000)")
    p.add_argument("--make-only", action="store_true", help="make the datasets (untimed) and stop: the timings of a later run do not wait on the links")
    p.add_argument("--skip", nargs="*", default=(), choices=("prepare", "load", "localize", "masks", "workers", "test"), help="parts not run")
    return p


# ---------------------------------------------------------------- synthetic data

def tiny_jpegs(folder, copies):
    """`copies` files, each one of 4 tiny JPEGs (32 x 24 noise), to hard-link from."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = [cv2.imencode(".jpg", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))[1].tobytes() for _ in range(4)]
    paths = [folder / f"{i}.jpg" for i in range(copies)]
    for i, p in enumerate(paths):
        if not p.is_file():
            p.write_bytes(data[i % 4])
    return paths


class Linker:
    """Hard links of a pool of tiny JPEGs, no file of the pool linked more than LINKS_PER_FILE times."""

    def __init__(self, pool_dir, total):
        self.pool, self.i = tiny_jpegs(pool_dir, max(4, math.ceil(total / LINKS_PER_FILE) + 4)), 0

    def link(self, path):
        if not os.path.lexists(path):
            os.link(self.pool[self.i % len(self.pool)], path)
        self.i += 1


def class_dir(cid):
    return f"{cid:05d}_Animalia_Chordata_Aves_Passeriformes_Family{cid % 97}_Genus{cid // 7}_species{cid}"


def uuid(i, salt):
    h = hashlib.md5(f"{salt}{i}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def write_json(path, head, parts):
    """A json object written piece by piece: `head` keys first, then each (key, iterable of entries)."""
    tmp = path.with_suffix(".part")
    with open(tmp, "w") as f:
        f.write("{" + json.dumps(head)[1:-1])
        for key, entries in parts:
            f.write(f', "{key}": [')
            for k, e in enumerate(entries):
                f.write((", " if k else "") + json.dumps(e))
            f.write("]")
        f.write("}")
    tmp.rename(path)


def make_inat2021(src, counts, linker, mini_per_class=None):
    """The 2021 release's layout: train.json (or train_mini.json: the first `mini_per_class`
    images of each class of train), val.json, public_test.json, and the image folders."""
    n_train, n_val, n_test, k = counts
    src.mkdir(parents=True, exist_ok=True)
    cats = [{"id": c, "name": f"Genus{c // 7} species{c}", "common_name": f"bird {c}", "supercategory": "Birds",
             "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes",
             "family": f"Family{c % 97}", "genus": f"Genus{c // 7}", "specific_epithet": f"species{c}",
             "image_dir_name": class_dir(c)} for c in range(k)]
    head = {"info": {"year": 2021, "version": "synthetic"}, "licenses": [{"id": 1, "name": "CC BY"}]}
    splits = {"train": (n_train, 0), "val": (n_val, 3_000_000), "public_test": (n_test, 4_000_000)}
    for split, (n, id0) in splits.items():
        if mini_per_class is not None and split == "train":
            n = min(n, mini_per_class * k)
        top = "train_mini" if mini_per_class is not None and split == "train" else split
        path = src / ("train_mini.json" if top == "train_mini" else f"{split}.json")
        if path.is_file():
            continue
        if split != "public_test":
            for c in range(k):
                (src / top / class_dir(c)).mkdir(parents=True, exist_ok=True)
        else:
            (src / top).mkdir(parents=True, exist_ok=True)

        def name(i):
            return f"{top}/{uuid(i, split)}.jpg" if split == "public_test" else f"{top}/{class_dir(i % k)}/{uuid(i, split)}.jpg"

        def images():
            for i in range(n):
                file_name = name(i)
                if mini_per_class is None:
                    linker.link(src / file_name)
                yield {"id": id0 + i, "width": 300 + (i * 37) % 500, "height": 200 + (i * 53) % 600, "file_name": file_name,
                       "license": 1, "rights_holder": f"observer {i % 5003}", "date": f"2019-0{1 + i % 9}-1{i % 10} 12:00:00+00:00",
                       "latitude": round(-40 + (i % 8000) / 100, 2), "longitude": round(100 + (i % 7000) / 100, 2),
                       "location_uncertainty": i % 2000}

        anns = ({"id": id0 + i, "image_id": id0 + i, "category_id": i % k} for i in range(n)) if split != "public_test" else None
        write_json(path, head, [("images", images()), ("categories", cats)] + ([("annotations", anns)] if anns else []))


def make_mini(src, full_src, counts):
    """inat2021-mini beside inat2021: train_mini.json over the first images of each class of
    train (its folder a link to train/), val and public_test linked."""
    src.mkdir(parents=True, exist_ok=True)
    for name in ("val.json", "public_test.json", "val", "public_test"):
        if not os.path.lexists(src / name):
            os.symlink(full_src / name, src / name)
    if not os.path.lexists(src / "train_mini"):
        os.symlink(full_src / "train", src / "train_mini")
    make_inat2021(src, counts, None, mini_per_class=counts[0] // counts[3])  # names under train_mini/: train/'s files


def make_inat2019(root, counts, linker):
    """The 2019 release's layout and json, as the stages read it."""
    n_train, n_val, n_test, k = counts
    if (root / "test2019.json").is_file():
        return root
    supers = ("Amphibians", "Birds", "Fungi", "Insects", "Plants", "Reptiles")
    cats = [{"id": c, "name": f"species {c}", "kingdom": "k", "phylum": "p", "class": "c", "order": "o", "family": "f",
             "genus": "g"} for c in range(k)]
    for c in range(k):
        (root / "train_val2019" / supers[c % 6] / str(c)).mkdir(parents=True, exist_ok=True)
    (root / "test2019").mkdir(parents=True, exist_ok=True)
    start = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        def name(i):
            md5 = hashlib.md5(f"{split}{i}".encode()).hexdigest()
            return f"test2019/{md5}.jpg" if split == "test" else f"train_val2019/{supers[i % k % 6]}/{i % k}/{md5}.jpg"

        def images(n=n, start=start, name=name):
            for i in range(n):
                linker.link(root / name(i))
                yield {"id": start + i, "width": 800, "height": 600 + i % 200, "file_name": name(i), "license": 1,
                       "rights_holder": f"observer {i % 5003}"}

        anns = [("annotations", ({"id": start + i, "image_id": start + i, "category_id": i % k} for i in range(n)))]
        write_json(root / f"{split}2019.json", {"info": {"year": 2019}},
                   [("images", images())] + ([] if split == "test" else [("categories", cats)] + anns))
        start += n
    return root


# ---------------------------------------------------------------- measuring

def probe(work, kind, *args, env=None):
    """bench/scale_probe.py KIND ARGS in its own process: its result, with main_mb (peak RSS) and wall_s."""
    out = work / f"probe-{kind}.json"
    out.unlink(missing_ok=True)
    rc, mb, wall = peak_rss_mb([ROOT / "bench" / "scale_probe.py", out, kind, *args], work / f"probe-{kind}.log")
    if rc != 0:
        raise RuntimeError(f"probe {kind} exited {rc}; see {work / f'probe-{kind}.log'}:\n{(work / f'probe-{kind}.log').read_text()[-2000:]}")
    return {**json.loads(out.read_text()), "main_mb": mb["main_mb"], "tree_mb": mb["tree_mb"], "wall_s": round(wall, 1)}


def slope(points, key):
    """Bytes per image between the two (images, {key: MB}) points."""
    (n0, a), (n1, b) = points
    return (b[key] - a[key]) * 2**20 / (n1 - n0)


def project(points, key, n=PROJECT_TO):
    """MB at n images, on the line through the two points."""
    n0, a = points[0]
    return a[key] + slope(points, key) * (n - n0) / 2**20


def loc_dataset(root, n, linker):
    """A 3-class dataset of n train images (4 val, 4 test) of tiny JPEGs, category ids of bench/memory's checkpoints."""
    if (root / "test2019.json").is_file():
        return root
    cats = [{"id": c, "name": f"species {c}"} for c in CATEGORY_IDS]
    start = 0
    for split, m in (("train", n), ("val", 6), ("test", 6)):
        folder = root / ("test2019" if split == "test" else "train_val2019")
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(m):
            name = f"{folder.name}/{split}{i:08d}.jpg"
            linker.link(root / name)
            images.append({"id": start + i, "file_name": name, "width": 32, "height": 24})
            anns.append({"id": start + i, "image_id": start + i, "category_id": CATEGORY_IDS[i % 3]})
        doc = {"images": images, "categories": cats} | ({} if split == "test" else {"annotations": anns})
        (root / f"{split}2019.json").write_text(json.dumps(doc))
        start += m
    return root


def localize(work, n, linker, world):
    data = loc_dataset(work / f"loc_data_{n}", n, linker)
    out = work / f"loc_{n}_{world}"
    if not (out / "checkpoint.pt").is_file():
        make_checkpoint(out, "coarse", 32)
    args = ["--data", data, "--out", out, "--localize-only", "--arch", "resnet18", "--resize", "32", "--img-size", "32",
            "--device", "cpu", "--workers", "0", "--batch-size", "64", "--amp", "off",
            "--allow-overlap"]  # every image a link of one of a few files: the overlap check would refuse val
    log = work / f"localize_{n}_{world}.log"
    t0 = time.time()
    if world == 1:
        rc, mb, _ = peak_rss_mb([ROOT / "coarse" / "train.py", *args], log)
        ranks = [mb]
    else:
        peaks = [work / f"localize_{n}_{world}.rank{r}.peak" for r in range(world)]
        for p in peaks:
            p.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
               ROOT / "bench" / "peak_rss.py", work / f"localize_{n}_{world}.rank{{rank}}.peak", ROOT / "coarse" / "train.py", *args]
        with open(log, "w") as f:
            rc = subprocess.run(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
        ranks = [json.loads(p.read_text()) for p in peaks if p.is_file()]
    if rc != 0 or len(ranks) != world:
        raise RuntimeError(f"localization of {n} images ({world} processes) exited {rc}; see {log}:\n{log.read_text()[-2000:]}")
    return {"main_mb": max(r["main_mb"] for r in ranks), "ranks_mb": [r["main_mb"] for r in ranks], "seconds": round(time.time() - t0, 1)}


def test_run(work, n, linker, ckpts):
    """test.py --model coarse on n tiny test images (whole images, 2 loaders)."""
    root = work / f"test_data_{n}"
    if not (root / "test2019.json").is_file():
        (root / "test2019").mkdir(parents=True, exist_ok=True)
        (root / "train_val2019").mkdir(parents=True, exist_ok=True)
        cats = [{"id": c, "name": f"species {c}"} for c in CATEGORY_IDS]
        train = [{"id": i, "file_name": f"train_val2019/{i}.jpg"} for i in range(12)]
        for im in train:
            linker.link(root / im["file_name"])
        anns = [{"id": i, "image_id": i, "category_id": CATEGORY_IDS[i % 3]} for i in range(12)]
        (root / "train2019.json").write_text(json.dumps({"images": train, "annotations": anns, "categories": cats}))
        test = [{"id": 100 + i, "file_name": f"test2019/{i:08d}.jpg", "width": 32, "height": 24} for i in range(n)]
        for im in test:
            linker.link(root / im["file_name"])
        (root / "test2019.json").write_text(json.dumps({"images": test}))
    sub = work / f"submission_{n}.csv"
    cmd = [ROOT / "test.py", "--data", root, "--coarse", ckpts["coarse"], "--fine", ckpts["fine"], "--model", "coarse",
           "--device", "cpu", "--workers", "2", "--batch-size", "64", "--amp", "off", "--submission", sub, "--allow-overlap"]
    log = work / f"test_{n}.log"
    rc, mb, seconds = peak_rss_mb(cmd, log)
    if rc != 0:
        raise RuntimeError(f"test.py on {n} images exited {rc}; see {log}:\n{log.read_text()[-2000:]}")
    return {**mb, "seconds": round(seconds, 1)}


def main(args):
    t_start = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = SMOKE if args.smoke else SIZES
    small = lambda pair, tiny: tiny if args.smoke else pair
    loc_sizes, mask_sizes = small(args.localize_sizes, (200, 600)), small(args.masks_sizes, (1_000, 5_000))
    test_sizes, worker_rows = small(args.test_sizes, (100, 400)), min(args.worker_rows, 1_000) if args.smoke else args.worker_rows
    total_links = sum(a + b + c for a, b, c, _ in [sizes["inat2019"], sizes["inat2021"]]) + 2 * sum(loc_sizes) + sum(test_sizes) + 100
    linker = Linker(work / "pool", total_links)
    res = {"cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "sizes": {k: list(v) for k, v in sizes.items()}}
    print(f"machine: {res['cpu_model']}, {res['cpu_cores']} cores; work {work}", flush=True)

    # the datasets: the 2021 release's json and folders, prepared; 2019's own layout
    src21, src_mini = work / "src" / "inat2021", work / "src" / "inat2021-mini"
    make_inat2021(src21, sizes["inat2021"], linker)
    make_mini(src_mini, src21, sizes["inat2021-mini"])
    data = {"inat2019": make_inat2019(work / "data" / "inat2019", sizes["inat2019"], linker),
            "inat2021-mini": work / "data" / "inat2021-mini", "inat2021": work / "data" / "inat2021"}
    print(f"datasets made ({time.time() - t_start:.0f} s)", flush=True)
    for fmt, src in (("inat2021-mini", src_mini), ("inat2021", src21)):  # prepare.py, timed beside its floor
        out = data[fmt] if not (data[fmt] / "train2019.json").is_file() else work / f"prepared-{fmt}"
        if out != data[fmt] and ("prepare" in args.skip or args.make_only):
            continue
        shutil.rmtree(out, ignore_errors=True)
        log = work / f"prepare_{fmt}.log"
        rc, mb, seconds = peak_rss_mb([ROOT / "data" / "prepare.py", fmt, src, "--out", out], log)
        if rc != 0:
            raise RuntimeError(f"prepare.py {fmt} exited {rc}; see {log}:\n{log.read_text()[-2000:]}")
        if out != data[fmt]:
            shutil.rmtree(out, ignore_errors=True)
        if args.make_only:
            continue
        floor = probe(work, "json-dump", src, work / "dumped")
        shutil.rmtree(work / "dumped", ignore_errors=True)
        res[f"prepare_{fmt}"] = {"prepare": {**mb, "seconds": round(seconds, 1)}, "json_load_dump": floor}
        print(f"prepare.py {fmt}: {seconds:.1f} s, {mb['main_mb']:.0f} MB; json.load + json.dump {floor['wall_s']:.1f} s, "
              f"{floor['main_mb']:.0f} MB", flush=True)
    if "prepare_inat2021" in res:
        p = res["prepare_inat2021"]
        res["scale_prepare_vs_json_time"] = p["prepare"]["seconds"] / p["json_load_dump"]["wall_s"]
    if args.make_only:
        return None
    res["json_mb"] = {name: round(sum((d / f).stat().st_size for f in ("train2019.json", "val2019.json", "test2019.json")) / 2**20, 1)
                      for name, d in data.items()}
    print(f"json sizes (MB): {res['json_mb']}", flush=True)

    if "load" not in args.skip:
        res["load"] = {}
        for name, d in data.items():
            r = {"json": probe(work, "json", d), "load": probe(work, "load", d), "load_checked": probe(work, "load", d, "check")}
            res["load"][name] = r
            print(f"{name}: json.load {r['json']['seconds']:.1f} s {r['json']['main_mb']:.0f} MB; load_dataset "
                  f"{r['load']['seconds']:.1f} s {r['load']['main_mb']:.0f} MB; with the file check {r['load_checked']['seconds']:.1f} s",
                  flush=True)
        big = res["load"]["inat2021"]
        res["scale_load_vs_json_time"] = big["load"]["seconds"] / big["json"]["seconds"]
        res["scale_load_vs_json_rss"] = big["load"]["main_mb"] / big["json"]["main_mb"]

    if "masks" not in args.skip:
        points = {"write": [], "read": []}
        for n in mask_sizes:
            folder = work / f"masks_{n}"
            w = probe(work, "masks-write", folder, n)
            r = probe(work, "masks-read", folder, n)
            points["write"].append((n, w))
            points["read"].append((n, r))
            shutil.rmtree(folder, ignore_errors=True)
            print(f"masks of {n} images: write {w['seconds']:.1f} s {w['main_mb']:.0f} MB ({w['file_mb']:.1f} MB file), "
                  f"read {r['seconds']:.1f} s {r['main_mb']:.0f} MB", flush=True)
        res["masks"] = {k: {"points": v, "bytes_per_image": slope(v, "main_mb"), "projected_mb": project(v, "main_mb")}
                        for k, v in points.items()}
        res["scale_masks_bytes_per_image"] = max(v["bytes_per_image"] for v in res["masks"].values())

    if "workers" not in args.skip:
        res["workers"] = {names: probe(work, "workers", data["inat2021"], worker_rows, names) for names in ("buffer", "list")}
        for names, r in res["workers"].items():
            print(f"loaders over {r['images']} of {r['split_images']} train rows, file names as a {names}: private memory "
                  f"{r['worker_private_mb_first']} -> {r['worker_private_mb_last']} MB", flush=True)
        res["scale_worker_rss_growth"] = res["workers"]["buffer"]["growth_mb"]

    if "localize" not in args.skip:
        res["localize"] = {}
        for world in (1, 2):
            pts = [(n, localize(work, n, linker, world)) for n in loc_sizes]
            res["localize"][f"world{world}"] = {"points": pts, "bytes_per_image": slope(pts, "main_mb"),
                                                "projected_mb": project(pts, "main_mb")}
            for n, r in pts:
                print(f"localization of {n} train images, {world} process(es): peak {r['ranks_mb']} MB, {r['seconds']:.0f} s", flush=True)
        res["scale_localize_bytes_per_image"] = max(v["bytes_per_image"] for v in res["localize"].values())

    if "test" not in args.skip:
        ckpts = {kind: make_checkpoint(work / f"ckpt_{kind}", kind, 32) for kind in ("coarse", "fine")}
        pts = [(n, test_run(work, n, linker, ckpts)) for n in test_sizes]
        res["test"] = {"points": pts, "bytes_per_image": slope(pts, "tree_mb"), "projected_mb": project(pts, "tree_mb", 500_000)}
        for n, r in pts:
            print(f"test.py --model coarse on {n} test images: peak {r['main_mb']:.0f} MB main, {r['tree_mb']:.0f} MB with loaders, "
                  f"{r['seconds']:.0f} s", flush=True)
        res["scale_test_rss_ratio"] = pts[1][1]["tree_mb"] / pts[0][1]["tree_mb"]

    res["wall_s"] = round(time.time() - t_start, 1)
    keys = {k: round(v, 3) for k, v in res.items() if k.startswith("scale_")}
    scale = {k: v for k, v in res.items() if not k.startswith("scale_")}
    scale["targets"] = {k: f"{op} {b:g}" for k, (op, b) in TARGETS.items() if k in keys}
    scale["targets_met"] = {k: check(TARGETS, k, keys[k]) for k in TARGETS if k in keys}
    print("\n" + table(keys, scale), flush=True)
    if args.smoke and args.out == get_args_parser().get_default("out"):
        return keys, scale
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    prev = old.get("scale", {})  # a rerun of some parts (--skip) keeps the other parts' measurements
    scale = {**prev, **scale, **{k: {**prev.get(k, {}), **scale[k]} for k in ("targets", "targets_met")}}
    out.write_text(json.dumps({**old, **keys, "scale": scale}, indent=2, default=float) + "\n")
    print(f"\n{out} ({res['wall_s']:.0f} s)", flush=True)
    return keys, scale


def table(keys, scale):
    lines = [f"{scale['cpu_model']}, {scale['cpu_cores']} cores", f"{'measure':<34}{'value':>12}  {'target':<9}{'met':<5}", "-" * 62]
    for k, v in keys.items():
        met = {True: "yes", False: "NO"}.get(scale["targets_met"].get(k), "")
        lines.append(f"{k:<34}{v:>12.3f}  {scale['targets'].get(k, ''):<9}{met:<5}")
    for part in ("masks", "localize"):
        for k, v in scale.get(part, {}).items():
            lines.append(f"  {part} {k}: {v['bytes_per_image']:.0f} bytes per image, {v['projected_mb']:.0f} MB projected at {PROJECT_TO:,} images")
    if "test" in scale:
        lines.append(f"  test.py: {scale['test']['bytes_per_image']:.0f} bytes per test image, {scale['test']['projected_mb']:.0f} MB projected at 500,000")
    return "\n".join(lines)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
