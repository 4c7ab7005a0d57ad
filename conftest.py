"""Root conftest: settings for every test and doctest, so nothing reaches the network or a display."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PURETOOLS_SMOKE", "1")  # notebook 07 runs with random weights and tiny data
