"""Every package the code imports is one requirements.txt declares: CI installs from it
alone, and the tests of scipy, statsmodels and submitit skip where they are missing (as on
the lent GPU machine), so an undeclared one would pass CI unnoticed."""
import ast
import re
import sys
from importlib.metadata import packages_distributions

from conftest import ROOT

SOURCES = [p for folder in ("", "kd", "experiments", "benchmarks", "tests")
           for p in (ROOT / folder).glob("*.py")]


def imported_top_level_names(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def declared():
    names = set()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if match := re.match(r"\s*([A-Za-z0-9_.-]+)", line.split("#")[0]):
            names.add(re.sub(r"[-_.]+", "-", match[1]).lower())
    return names


def test_every_third_party_import_is_declared_in_requirements():
    local = {p.stem for p in SOURCES} | {"kd", "benchmarks", "experiments"}
    distributions = packages_distributions()
    needed = {}
    for path in SOURCES:
        for name in imported_top_level_names(path):
            if name in sys.stdlib_module_names or name in local:
                continue
            for dist in distributions.get(name, [name]):
                needed.setdefault(re.sub(r"[-_.]+", "-", dist).lower(), path.name)
    assert len(needed) >= 10  # torch, numpy, pandas, ...: the scan found the imports
    missing = {dist: where for dist, where in needed.items() if dist not in declared()}
    assert not missing, f"imported but not in requirements.txt: {missing}"
