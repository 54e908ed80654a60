"""The shape of the package: no import circles between relayrl's modules, no module over 600 lines,
and the import boundaries that keep processes light (a worker never imports the trainer side;
``relayrl keys`` never imports torch)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "relayrl"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module):
    """Import statements run when the module is imported: at the top level, also inside module-level
    ``if``/``try``/``with`` blocks, but not in functions, classes or ``if TYPE_CHECKING:``."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                stack.extend(node.body)
            stack.extend(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                stack.extend(block)
        elif isinstance(node, ast.With):
            stack.extend(node.body)


def import_graph() -> dict[str, set[str]]:
    """Module -> the relayrl modules it imports at import time (relative imports resolved)."""
    files = source_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # ``from X import y``: X, and X.y when y is a submodule
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names
                                    if f"{base}.{alias.name}" in files]
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_cycle_finder_finds_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_relative_imports():
    graph = import_graph()
    assert "relayrl.transport.codec" in graph["relayrl.transport.trainer_end"]
    assert "relayrl.buffer" in graph["relayrl.transport.trainer_end"]
    assert "relayrl.roles.common" in graph["relayrl.roles.remote_worker"]
    # TYPE_CHECKING imports and imports inside functions do not count
    assert "relayrl.transport.trainer_end" not in graph["relayrl.transport.accounting"]
    assert "relayrl.trainer" not in graph["relayrl.roles.common"]


def test_no_import_cycles_in_the_package():
    cycles = find_cycles(import_graph())
    assert cycles == [], f"import cycles (module-level imports): {cycles}"


def test_no_module_is_over_600_lines():
    # (the target layout of ARCHITECTURE.md: one concept per module, 150-600 lines)
    long = {name: n for name, path in source_files().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


# --- import boundaries, measured in fresh interpreters ---------------------------------------------------
def modules_after(code: str, tmp_path: Path) -> set[str]:
    """The names in ``sys.modules`` after ``code`` runs in a fresh interpreter."""
    script = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


TRAINER_SIDE = ("pandas", "relayrl.checkpoint", "relayrl.checkpoint_codec", "relayrl.loggers", "relayrl.trainer")


def test_a_worker_process_imports_nothing_of_the_trainer_side(tmp_path):
    """What a local worker process and ``relayrl worker`` import to run: the roles' worker modules,
    the worker, its end of the transport, the configuration's env check and actor factory, one
    action of the actor, and the real ``relayrl worker`` command up to its first wait for weights
    (told to stop there: no trainer is needed)."""
    modules = modules_after(
        "import relayrl.roles.remote_worker, relayrl.roles.local_run, relayrl.worker\n"
        "import relayrl.transport.worker_end\n"
        "from relayrl.config import RunConfig\n"
        "config = RunConfig()\n"
        "spaces = config.env_spaces()\n"
        "actor = config.actor_factory()(*spaces)\n"
        "actor.act(spaces[0].sample())\n"
        "import relayrl.roles.remote_worker as remote_worker\n"
        "real = remote_worker.run_worker\n"
        "remote_worker.run_worker = lambda config, plan, **kw: real(config, plan, should_stop=lambda: True, **kw)\n"
        "from relayrl.cli import main\n"
        "assert main(['worker', '--connect', '127.0.0.1', '--buffer-port', '9', '--weights-port', '10',\n"
        "             '--name', 'layout-test']) == 0\n", tmp_path)
    assert {"relayrl.roles.remote_worker", "relayrl.transport.worker_end", "relayrl.cli", "torch"} <= modules
    assert sorted(m for m in modules if m in TRAINER_SIDE) == []


def test_relayrl_keys_imports_no_torch(tmp_path):
    modules = modules_after(
        "from relayrl.roles.key_setup import make_keys\n"
        "from relayrl.roles import make_keys as same, RoleError, DEFAULT_BUFFER_PORT\n"
        "assert same is make_keys\n"
        f"make_keys({str(tmp_path / 'keys')!r}, ['w0'], relay=True)\n", tmp_path)
    assert (tmp_path / "keys" / "workers" / "w0.key_secret").is_file()
    assert "relayrl.roles.key_setup" in modules
    assert "torch" not in modules and "numpy" not in modules and "pandas" not in modules


@pytest.mark.parametrize("package", ["relayrl.roles", "relayrl.transport", "relayrl"])
def test_packages_import_nothing_heavy(tmp_path, package):
    modules = modules_after(f"import {package}\n", tmp_path)
    assert not {"torch", "zmq", "numpy", "pandas"} & modules


ALGORITHM_NAMES = {"SACAgent", "SACConfig", "MLPActor", "EnsembleCritic", "sac", "SAC"}


def _code_tokens(path: Path):
    """Names and string literals of a module's code (docstrings and comments are prose: skipped)."""
    import io
    import tokenize

    previous = None
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.NAME:
            yield token.string
        elif token.type == tokenize.STRING and previous not in (tokenize.INDENT, tokenize.NEWLINE, tokenize.NL,
                                                                 tokenize.DEDENT, None):
            yield token.string.strip("'\"")
        if token.type not in (tokenize.COMMENT,):
            previous = token.type


def test_nothing_outside_algorithms_names_an_algorithm():
    """The trainer, the configuration and the command line look the algorithm up in the registry.
    (The package's lazy export table, a list of public names, is the one exception.)"""
    package = Path(__file__).resolve().parents[1] / "src" / "relayrl"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] == "algorithms" or relative == Path("__init__.py"):
            continue
        named = {token for token in _code_tokens(path) if token in ALGORITHM_NAMES
                 or token.startswith("relayrl.algorithms.") or token in ("algorithms.sac", ".algorithms.sac")}
        if named:
            offenders.append(f"{relative}: {sorted(named)}")
    assert not offenders, offenders


def test_no_unsafe_loader_in_the_package():
    package = Path(__file__).resolve().parents[1] / "src" / "relayrl"
    hits = [str(p) for p in package.rglob("*.py") if "torch.load" in p.read_text()]
    assert not hits, hits
