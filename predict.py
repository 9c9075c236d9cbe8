"""Predict: which species is in these photos, with the whole method (docs/predict.md).

    python3 predict.py photos/ --coarse runs/toy/coarse --fine runs/toy/fine --out predictions.csv
    python3 predict.py a.jpg b.png @more.txt --out predictions.jsonl --overlay overlays/
    python3 predict.py photos/ --model coarse          # the coarse model's whole-image answer

For each image: the coarse model's CAM on the whole image (the coarse run's size, --cam-threshold
and --mask-size, from its checkpoint), the mask, the fine model's 16 test-time crops around it, the
softmax mean, the prior correction at --tau, the top --topk: test.py's own path (fgvc/predict.py).

Reads  PATH...: image files, folders (recursively, sorted; images by their content), @list.txt
       (one path a line, relative to the list's folder); --coarse/checkpoint.pt, --fine/checkpoint.pt
       (their class names and train counts; --data/train2019.json for checkpoints older than them).
Writes --out (default predictions.csv), atomically: .csv with the header
       `path,category_id_1,name_1,probability_1,...,category_id_k,name_k,probability_k,box_x,box_y,box_w,box_h`,
       or .jsonl, one `{"path", "predictions": [{"category_id", "name", "probability"}], "box": [x, y, w, h]}`
       a line; one row an image that could be read, in input order. Each file that is not an image or
       cannot be read is listed on stderr (`skipped PATH: reason`) and has no row; exit 1 when no
       file could be read. --overlay DIR: one PNG an image (same stem). The output is checked (never
       an input) and locked (`.<name>.lock` beside it; --overlay DIR/.lock) at start.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent; sys.path.insert(0, str(ROOT))

from fgvc import cli, dist, outputs
from fgvc.atomic import atomic_write
from fgvc.checkpoint import CHECKPOINT
from fgvc.config import PredictConfig
from fgvc.errors import NoReadableImages, UserError
from fgvc.inference import steady_heap
from fgvc.paths import resolve
from fgvc.predict import Inputs, Predictor, output_format, overlay_names, report_skipped, write_overlay, write_rows


def get_args_parser():
    return cli.parser(PredictConfig)  # every flag, its default and range: fgvc/config.py, docs/config.md


def claim_outputs(args, inputs, split):
    """--out (and the overlays) checked against every input, then locked."""
    out = resolve(args.out)
    output_format(out)
    overlay = resolve(args.overlay) if args.overlay else None
    names = overlay_names(inputs.shown) if overlay else []
    writes = [("--out", out)] + [("--overlay", overlay / n) for n in names]
    reads = [("the --coarse checkpoint", resolve(args.coarse) / CHECKPOINT), ("the --fine checkpoint", resolve(args.fine) / CHECKPOINT),
             ("--data's train2019.json", resolve(args.data) / "train2019.json" if args.data else None)]
    reads += [("the list", p) for p in inputs.reads]
    outputs.claim(overlay, writes, reads, [split] if len(split) else (), [("--overlay", overlay)] if overlay else [])
    return out, overlay, names


def main(args):
    steady_heap()  # one pass over the images, a chunk at a time: memory must not grow with them
    if int(os.environ.get("WORLD_SIZE", "1")) >= 2:
        raise UserError(f"predict.py runs as one process, not under torchrun (WORLD_SIZE {os.environ['WORLD_SIZE']}): "
                        "give each GPU a part of the photos (--device cuda:N) and --out of its own")
    device = dist.setup(args.device)
    inputs = Inputs(args.paths)
    split = inputs.split()
    out, overlay, names = claim_outputs(args, inputs, split)
    predictor = Predictor(**{**{k: v for k, v in vars(args).items() if k != "paths"}, "device": str(device)})
    report_skipped(inputs.skipped)  # the files that are not images, at once; the unreadable ones as each chunk finds them
    nothing = f"no readable image among the files given (each listed above); {out} not written"
    if not inputs.real:
        raise NoReadableImages(nothing)
    written = 0

    def rows():
        nonlocal written
        for chunk in predictor.chunks(inputs, keep_cams=overlay is not None):
            report_skipped(chunk.skipped)
            for r, row in chunk.items():
                if overlay is not None:
                    write_overlay(overlay / names[chunk.start + r], chunk, r, row)
                written += 1
                yield row
        if not written:  # raised inside the write: the temporary file goes, --out stays as it was
            raise NoReadableImages(nothing)

    atomic_write(out, lambda f: write_rows(f, rows(), output_format(out), predictor.args.topk))
    print(f"{out}: {written} rows, model {args.model}, tau {predictor.tau:g}"
          + (f", {len(inputs.skipped)} files skipped" if inputs.skipped else "")
          + (f"; overlays in {overlay}" if overlay is not None else ""), flush=True)

if __name__ == "__main__":
    cli.run(main, get_args_parser())
