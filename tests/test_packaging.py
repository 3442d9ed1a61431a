"""The top-level kernels/ folder never hides the unrelated PyPI package `kernels` (which transformers imports),
whatever puts the repository root on sys.path; inside minichord it is `minichord.kernels`."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_in_repo_root(code: str, *flags: str) -> subprocess.CompletedProcess:
    """`python [flags] -c code` started in the repository root (so '' on sys.path is the root, as under python -m)."""
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_import_kernels_in_the_repo_root_is_never_the_repository_folder():
    out = run_in_repo_root("import kernels; print(kernels.__file__)")
    if out.returncode == 0:  # the PyPI package is installed: it is the one imported
        assert not Path(out.stdout.strip()).resolve().is_relative_to(REPO / "kernels"), out.stdout
    else:  # not installed: the import fails as for any missing package
        assert "ModuleNotFoundError: No module named 'kernels'" in out.stderr, out.stderr


def test_without_site_packages_import_kernels_fails_cleanly():
    out = run_in_repo_root("import sys; sys.path.insert(0, ''); import kernels", "-S")  # -S: nothing installed
    assert out.returncode == 1 and "ModuleNotFoundError: No module named 'kernels'" in out.stderr, out.stderr
    assert "kernels" not in run_in_repo_root("import sys; sys.path.insert(0, '')\ntry:\n import kernels\n"
                                             "except ImportError: pass\nprint(list(sys.modules))", "-S").stdout


def test_minichord_kernels_is_the_repository_folder():
    out = run_in_repo_root("import minichord.kernels.logprobs as m; print(m.__file__)")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == REPO / "kernels" / "logprobs.py"
