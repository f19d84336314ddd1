"""The package's import graph: no circle anywhere, and the study package imports no Ray until a study runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "akd_ray"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the akd_ray modules it imports, at the top or inside a function (both count: a lazy
    import only hides a circle until the day someone moves it to the top)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from akd_ray import report` imports the module akd_ray.report
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules (first == last), or None: depth-first search with three colours."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_imports_of_both_forms():
    graph = import_graph()
    assert "akd_ray.config" in graph["akd_ray.report"]  # `from akd_ray.config import Study`
    assert "akd_ray.study.scheduler" in graph["akd_ray.study.run"]  # a module of a subpackage


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_importing_the_study_package_imports_no_ray():
    code = ("import sys, akd_ray.study, akd_ray.study.layout, akd_ray.study.signals\n"
            "from akd_ray.study import Layout, Interrupted, validate\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_study_names_load_their_room_on_first_use():
    code = ("import sys\nfrom akd_ray.study import GroupedHalving\n"
            "print(GroupedHalving.__module__, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["akd_ray.study.scheduler", "True"]


def documented_rooms() -> list[str]:
    """The rooms of docs/ARCHITECTURE.md's main table, in its order, as module prefixes."""
    doc = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    rooms = []
    for line in doc.splitlines():
        cells = line.split("|")
        if len(cells) < 4 or "`akd_ray/" not in cells[2]:
            continue
        path = cells[2].split("`")[1].removesuffix(".py").removesuffix("/")
        parts = path.split("/")
        rooms.append(".".join(parts[:2]))  # akd_ray/method/schedules -> akd_ray.method
    return rooms


def test_architecture_lists_every_room_and_every_import_points_up_its_table():
    rooms = documented_rooms()
    room_of = {}
    for module in import_graph():
        matches = [r for r in rooms if module == r or module.startswith(r + ".")]
        if module != "akd_ray":
            assert matches, f"{module} is in no room of docs/ARCHITECTURE.md"
            room_of[module] = rooms.index(matches[0])
    for module, targets in import_graph().items():
        for target in targets:
            if module in room_of and target in room_of and room_of[target] > room_of[module]:
                raise AssertionError(f"{module} imports {target}, a room below it in docs/ARCHITECTURE.md")
