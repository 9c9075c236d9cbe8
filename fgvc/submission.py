"""The Kaggle file: header `id,predicted`, one row per test image, 5 category ids best first."""
import io

import numpy as np

from .atomic import atomic_write
from .csvfile import read_csv
from .errors import UserError


def write_submission(path, image_ids, predicted):
    """Write atomically; `predicted` (N, 5) holds real category ids, best first."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    if len(image_ids) != len(predicted) or len(np.unique(image_ids)) != len(image_ids):
        raise UserError(f"{path}: refusing to write {len(predicted)} predictions for {len(image_ids)} ids")
    buf = io.StringIO()
    buf.write("id,predicted\n")
    for i, row in zip(image_ids, predicted):
        buf.write(f"{i},{' '.join(str(c) for c in row)}\n")
    data = buf.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))


def read_submission(path):
    """{id: [category ids]} of a submission file."""
    return dict(read_csv(path, ("id", "predicted"), lambda f: (int(f[0]), [int(c) for c in f[1].split()])))


def read_labels(path):
    """truth/test_labels.csv (`id,category_id`) -> {id: category id}."""
    return dict(read_csv(path, ("id", "category_id"), lambda f: (int(f[0]), int(f[1]))))


def top1_error(submission, labels):
    """Kaggle's metric: the share of images whose first prediction is wrong."""
    return float(np.mean([submission[i][0] != c for i, c in labels.items()]))
