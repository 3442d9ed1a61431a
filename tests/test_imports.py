"""The shape of the library: every module imports on its own, no import cycle (lazy imports inside functions
count too), and the size budget of the core (every .py under minichord/ and kernels/)."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"minichord": REPO / "minichord", "minichord.kernels": REPO / "kernels"}


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of minichord (kernels/ is minichord.kernels)."""
    out = {}
    for package, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The minichord modules `name` imports anywhere in its file (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from package import module`
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}  # not its own parents


def test_no_import_cycle():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path[path.index(nxt):] + [node, nxt]) \
                if nxt in path else f"import cycle: {node} -> {nxt}"
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert graph["minichord.losses"] <= {"minichord.config"}, "the loss math depends on the config only"
    assert not any(m == "minichord.lm_head" for k in ("minichord.kernels.logprobs", "minichord.kernels.fused_loss")
                   for m in graph[k]), "the kernels never import the torch dispatch that calls them"


def test_each_module_imports_alone():
    """Each module imported first, in a process where no other minichord module is loaded yet."""
    code = ("import importlib, sys\nfailed = []\nfor name in sys.argv[1:]:\n"
            "    for m in [m for m in sys.modules if m == 'minichord' or m.startswith('minichord.')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception as e:\n        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
            "print('\\n'.join(failed)); sys.exit(1 if failed else 0)")
    out = subprocess.run([sys.executable, "-c", code, *modules()], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_core_size_budget():
    """<= 4,800 non-blank lines in all, no file over 300, <= 25 modules directly in minichord/."""
    sizes = {path: sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
             for path in modules().values()}
    assert sum(sizes.values()) <= 4800, f"core is {sum(sizes.values())} non-blank lines"
    too_long = {str(p.relative_to(REPO)): n for p, n in sizes.items() if n > 300}
    assert not too_long, f"files over 300 non-blank lines: {too_long}"
    assert len(list((REPO / "minichord").glob("*.py"))) <= 25
