"""Maskers: which region of a real image a generator inpaints.

``strokes`` and ``boxes`` draw LaMa-style random shapes that carry no face semantics;
``landmarks`` picks a face part from dlib's 68 landmarks, as the Dolos benchmark does. The
submodules are imported lazily through :data:`dolos_bench.registry.MASKERS`, so that listing or
validating recipes never loads dlib; shared argument checks live in :mod:`.common`.
"""
