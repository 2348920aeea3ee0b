"""A stand-in training script: prints where it runs and what it sees."""

import os

print("running in", os.getcwd())
print("commit", os.environ.get("KONDUKTOR_GIT_COMMIT", "unknown"))
