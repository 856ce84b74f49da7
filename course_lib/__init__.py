"""course_lib: the helper library of the course *Image generation, from GANs to LLM-conditioned
diffusion, and how to make it fast*.

Small modules, one topic each. Notebooks import what they teach from; nothing here reads a
notebook's globals. Chapter 00 (the tour) introduces :mod:`course_lib.runtime`,
:mod:`course_lib.data`, :mod:`course_lib.pretrained` and :mod:`course_lib.checks`.

The modules stand on floors, and imports run downwards only (``pyproject.toml`` writes the floors
as an import-linter contract that the tests check; ``docs/authoring.md`` says which module is on
which floor).
"""

__version__ = "0.1.0"
