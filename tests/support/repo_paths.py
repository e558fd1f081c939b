"""Where the repository is, for tests at any depth of tests/ (one definition instead of one per file)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / "tools"
SUPPORT = Path(__file__).resolve().parent  # scripts the tests start by path (cpu_bf16_pretrain.py, ...)
