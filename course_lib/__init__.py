"""course_lib: the helper library of the course *Image generation, from GANs to LLM-conditioned
diffusion, and how to make it fast*.

Small modules, one topic each. Notebooks import what they teach from; nothing here reads a
notebook's globals. Chapter 00 (the tour) introduces :mod:`course_lib.runtime`,
:mod:`course_lib.data`, :mod:`course_lib.pretrained` and :mod:`course_lib.checks`.
"""
from pathlib import Path

__version__ = "0.1.0"

#: The repository root when the course is used from a checkout (``data/`` lives there).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where shipped checkpoints live.
CHECKPOINT_DIR = REPO_ROOT / "data" / "checkpoints"
