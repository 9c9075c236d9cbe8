"""The one CSV reader: the small comma-separated files of this project (truth/test_labels.csv,
truth/boxes.csv, submission.csv). A wrong header or a malformed line is a DatasetError naming
the file and the line."""
from .errors import DatasetError


def read_csv(path, header, parse):
    """[parse(fields) for each line] of the CSV file `path`, whose first line must be `header`
    (column names); blank lines are skipped. `parse` raises ValueError on a malformed line."""
    rows = []
    with open(path) as f:
        if f.readline().strip() != ",".join(header):
            raise DatasetError(f"{path}: header is not '{','.join(header)}'")
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            try:
                fields = line.rstrip("\r\n").split(",")
                if len(fields) != len(header):
                    raise ValueError(line)
                rows.append(parse(fields))
            except ValueError:
                raise DatasetError(f"{path}: line {n} is not '{','.join(header)}': {line.strip()[:80]!r}") from None
    return rows
