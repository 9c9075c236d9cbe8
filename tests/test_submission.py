import numpy as np
import pytest

import fgvc.atomic
from fgvc.boxes import read_boxes
from fgvc.errors import DatasetError, UserError
from fgvc.submission import read_labels, read_submission, top1_error, write_submission


def test_submission_format(tmp_path):
    path = tmp_path / "submission.csv"
    ids = [268245, 268243, 268244]
    predicted = np.array([[71, 108, 339, 341, 560], [5, 4, 3, 2, 1], [1009, 0, 7, 8, 9]])
    write_submission(path, ids, predicted)
    lines = path.read_text().splitlines()
    assert lines[0] == "id,predicted"
    assert lines[1] == "268245,71 108 339 341 560"
    assert len(lines) == 4 and all(len(l.split(",")[1].split()) == 5 for l in lines[1:])
    sub = read_submission(path)
    assert sub[268243] == [5, 4, 3, 2, 1]
    (tmp_path / "labels.csv").write_text("id,category_id\n268245,71\n268243,4\n268244,1009\n")
    assert top1_error(sub, read_labels(tmp_path / "labels.csv")) == pytest.approx(1 / 3)


def test_refuses_duplicate_ids_or_missing_rows(tmp_path):
    with pytest.raises(UserError, match=r"s\.csv: refusing to write 2 predictions for 2 ids"):
        write_submission(tmp_path / "s.csv", [1, 1], np.zeros((2, 5), int))
    with pytest.raises(UserError, match=r"s\.csv: refusing to write 2 predictions for 3 ids"):
        write_submission(tmp_path / "s.csv", [1, 2, 3], np.zeros((2, 5), int))
    assert not (tmp_path / "s.csv").exists()


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "submission.csv"
    write_submission(path, [1], [[1, 2, 3, 4, 5]])
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fgvc.atomic.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        write_submission(path, [1, 2], [[5, 4, 3, 2, 1], [1, 1, 1, 1, 1]])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


@pytest.mark.parametrize("reader,header,bad", [
    (read_labels, "id,category_id", "7,x"),
    (read_submission, "id,predicted", "7"),
    (read_boxes, "image_id,x,y,w,h", "7,1,2,3"),
])
def test_the_csv_files_name_the_file_and_line_of_a_bad_entry(tmp_path, reader, header, bad):
    """One reader (fgvc/csvfile.py) for labels, submissions and boxes: a wrong header or a
    malformed line is a DatasetError with the file and the line number; blank lines are skipped."""
    path = tmp_path / "f.csv"
    path.write_text(f"{header}\n\n{bad}\n")
    with pytest.raises(DatasetError, match=rf"f\.csv: line 3 is not '{header}': '{bad}'"):
        reader(path)
    path.write_text("id;category_id\n1;2\n")
    with pytest.raises(DatasetError, match=rf"f\.csv: header is not '{header}'"):
        reader(path)
