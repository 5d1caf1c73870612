"""The book's one implementation: every runnable cell of every chapter imports from here.

``import lib`` is cheap and works on the CPU: subpackages (``lib.flash``, ``lib.diffusion``,
``lib.rl``, ...) and optional heavy dependencies (triton, gymnasium rendering) are imported only by
the code that needs them.
"""

__version__ = "0.1.0"
