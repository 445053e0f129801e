"""Shared test set-up: offline, CPU, small thread counts (DESIGN.md section 10)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
