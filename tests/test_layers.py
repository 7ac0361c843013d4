"""The package's structure, as docs/ARCHITECTURE.md states it: layers whose imports only point down, no cycles
between packages, and modules a reader can take in at once (over 500 lines only with the reason in their
docstring). Every import is read, including the ones inside functions (lazy imports are still dependencies)."""

from __future__ import annotations

import ast
from collections import defaultdict

from tests.helpers.cli import REPO_ROOT

PACKAGE = REPO_ROOT / "vstmon"

# lowest first; a part may import its own layer's parts (without a cycle) and the layers below, never above
LAYERS: list[set[str]] = [
    {"vstmon", "errors", "log", "paths", "types", "stage"},  # the core: shared by everything
    {"config"},  # the settings tree: no I/O beyond the YAML file
    {"model", "ingest", "subjects", "wire"},  # the network, reading video, people, the wire protocol
    {"stream", "inference"},  # one stream's pipeline; running the model
    {"view", "service", "offline", "train"},  # what a user runs: the daemon, classify, training, the page
    {"cli", "__main__"},  # the command line
]
MAX_LINES = 500
LONG_MODULE_MARK = "Over 500 lines:"  # a long module's docstring says why it is long, after this mark


def _part(module: str) -> str:
    """The part of the package a module belongs to: its folder, or itself at the top level."""
    parts = module.split(".")
    return "vstmon" if len(parts) == 1 else parts[1]


def _imports() -> dict[str, set[tuple[str, str]]]:
    """part -> {(imported part, importing module)} across parts."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        source = _part(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name == "vstmon" or name.startswith("vstmon."):
                    target = _part(name)
                    if target != source:
                        edges[source].add((target, module))
    return edges


def _layer(part: str) -> int:
    for index, layer in enumerate(LAYERS):
        if part in layer:
            return index
    raise AssertionError(f"vstmon/{part} is in no layer: add it to LAYERS here and to docs/ARCHITECTURE.md")


def test_every_part_is_in_a_layer_and_imports_only_point_down() -> None:
    upward = [
        f"{module} imports vstmon.{target} (layer {_layer(target)} above {_layer(source)})"
        for source, targets in _imports().items()
        for target, module in targets
        if _layer(target) > _layer(source)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_cycles_between_parts() -> None:
    graph = {source: {target for target, _ in targets} for source, targets in _imports().items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[str] = []

    def visit(part: str, path: list[str]) -> None:
        state[part] = 1
        for target in sorted(graph.get(part, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[part] = 2

    for part in sorted(graph):
        if part not in state:
            visit(part, [part])
    assert not cycles, "\n".join(cycles)


def test_modules_over_500_lines_say_why_in_their_docstring() -> None:
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and LONG_MODULE_MARK not in (
            ast.get_docstring(ast.parse(path.read_text())) or ""
        ):
            unexplained.append(f"{path.relative_to(REPO_ROOT)}: {lines} lines")
    assert not unexplained, "\n".join(unexplained)


def test_the_layers_here_are_the_ones_architecture_md_states() -> None:
    text = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for index, layer in enumerate(LAYERS):
        line = f"{index}. " + ", ".join(f"`{part}`" for part in sorted(layer))
        assert line in text, f"docs/ARCHITECTURE.md does not state layer {index} as: {line}"
