"""Triton kernels, installed as `minichord.kernels` (pyproject's package-dir mapping).

Imported as `kernels` (the repository root on sys.path) it would hide the PyPI package `kernels` that transformers
imports, so it then loads whatever `kernels` the rest of sys.path holds, or reports none."""

if __name__ == "kernels":
    import importlib.util
    import os
    import sys
    from importlib.machinery import PathFinder

    _repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = PathFinder.find_spec(__name__, [p for p in sys.path if os.path.abspath(p or os.curdir) != _repo])
    if _spec is None:
        del sys.modules[__name__]
        raise ModuleNotFoundError("No module named 'kernels' (the repository's kernels/ is minichord.kernels)",
                                  name=__name__)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module  # `import kernels` returns what sys.modules holds once this file has run
    _spec.loader.exec_module(_module)
