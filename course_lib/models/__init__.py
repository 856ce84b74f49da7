"""Model families of the course, one module each (``gan``, ``vae``, ``attention``, ``transformer``,
``ddpm``, ``text_to_image``, ...). Modules that ship checkpoints register them with
:func:`course_lib.pretrained.register` at import time."""
