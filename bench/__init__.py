"""The performance harness (`make bench`): see run.py."""
