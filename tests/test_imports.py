"""Imports point down: no library module imports an entry point (`train`, `evaluate`, `export`,
`compare`), and nothing but the tests imports the test helpers (`flowrl_jax.testing`). Read from
the source with `ast`, so a lazy import inside a function counts too."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"train", "evaluate", "export", "compare"}


def imported(path: pathlib.Path) -> set[str]:
    """Every module `path` imports, as dotted names (`from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_library_module_imports_an_entry_point():
    entry = {f"flowrl_jax.{name}" for name in ENTRY_POINTS}
    bad = {}
    for path in sorted((ROOT / "flowrl_jax").rglob("*.py")):
        found = imported(path) & entry
        if found:
            bad[str(path.relative_to(ROOT))] = sorted(found)
    assert not bad, bad


def test_only_tests_import_the_test_helpers():
    bad = []
    for folder in ("flowrl_jax", "benchmarks", "launch"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name != "testing.py" and "flowrl_jax.testing" in imported(path):
                bad.append(str(path.relative_to(ROOT)))
    assert not bad, bad


def test_the_check_sees_a_lazy_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from flowrl_jax import train\n    import flowrl_jax.testing\n")
    assert {"flowrl_jax.train", "flowrl_jax.testing"} <= imported(source)
