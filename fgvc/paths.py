"""The repository root, and the one rule for relative paths: they resolve against it."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def resolve(path):
    """An absolute path for `path`; a relative path is taken relative to the repo root, not the cwd."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path
