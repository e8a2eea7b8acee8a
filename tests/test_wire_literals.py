"""Wire names live in one place: no module spells a protocol path that coapdev/const.py
defines (``"/device"`` or ``("device",)``); each imports it (``uri_path(PATH_DEVICE)``)."""

from __future__ import annotations

import ast

from support import REPO

from coapdev import const

PATHS = {name: value for name, value in vars(const).items() if name.startswith("PATH_")}


def spelled_paths(tree: ast.AST) -> list[tuple[int, str]]:
    as_text = {const.uri_path(path): name for name, path in PATHS.items()}
    as_tuple = {path: name for name, path in PATHS.items()}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in as_text:
            found.append((node.lineno, as_text[node.value]))
        elif isinstance(node, ast.Tuple) and node.elts:
            values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if len(values) == len(node.elts) and tuple(values) in as_tuple:
                found.append((node.lineno, as_tuple[tuple(values)]))
    return found


def test_no_module_spells_a_protocol_path():
    offenders = []
    for root in ("coapdev", "gateway"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path == REPO / "coapdev" / "const.py":
                continue
            for line, name in spelled_paths(ast.parse(path.read_text())):
                offenders.append(f"{path.relative_to(REPO)}:{line}: use const.{name}")
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_both_spellings():
    tree = ast.parse('get("/device")\nreserved = {("onboard",)}\nfine = "/devices"\n')
    assert spelled_paths(tree) == [(1, "PATH_DEVICE"), (2, "PATH_ONBOARD")]
