"""The package mirrors the pipeline: one subpackage per stage, named as its rule file and its test folder,
no module importing a later stage, and no reference to Snakemake in the package."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "ferseq"
# The stages in pipeline order; a module may import its own stage and earlier ones only.
STAGES = ["common", "data", "faces", "frame_model", "pretrain", "features", "sequences", "sequence_model", "finetune",
          "evaluation", "apply", "cli"]


def stage_of(module: str) -> str | None:
    """The stage of a dotted ``ferseq...`` module name, else None: ``cli`` and ``__main__`` are the top, the package
    itself (its ``__version__``) is with the plumbing."""
    parts = module.split(".")
    if parts[0] != "ferseq":
        return None
    if len(parts) == 1:
        return "common"
    return "cli" if parts[1] in ("cli", "__main__") else parts[1]


def imports_of(path: Path, package: Path = PACKAGE) -> set[str]:
    """Every ferseq module a file imports, at the top or inside a function (``from ferseq.x import y`` counts as
    ``ferseq.x.y`` when ``y`` is a module, else as ``ferseq.x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("ferseq"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ferseq"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                where = package.parent / candidate.replace(".", "/")
                found = where.with_suffix(".py").exists() or where.is_dir()
                names.add(candidate if found else node.module)
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_a_later_stage():
    later = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = stage_of(module_name(path))
        assert mine in STAGES, f"{path.relative_to(REPO)} is in no stage's folder ({', '.join(STAGES)})"
        for imported in imports_of(path):
            theirs = stage_of(imported)
            if theirs in STAGES and STAGES.index(theirs) > STAGES.index(mine):
                later.append(f"{module_name(path)} ({mine}) imports {imported} ({theirs})")
    assert not later, "\n".join(later)


def test_the_check_sees_a_late_import(tmp_path):
    # The check itself: a module of the faces stage that imports the evaluation, inside a function, is found.
    fake = tmp_path / "src" / "ferseq"
    (fake / "faces").mkdir(parents=True)
    (fake / "evaluation").mkdir()
    (fake / "evaluation" / "metrics.py").write_text("")
    (fake / "faces" / "bad.py").write_text("def f():\n    from ferseq.evaluation import metrics\n")
    assert imports_of(fake / "faces" / "bad.py", fake) == {"ferseq.evaluation.metrics"}
    assert stage_of("ferseq.evaluation.metrics") == "evaluation" and stage_of("ferseq.faces.bad") == "faces"


def test_each_stage_is_a_rule_file_a_subpackage_and_a_test_folder():
    rules = {path.stem for path in (REPO / "workflow" / "rules").glob("*.smk")}
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    tests = {path.name for path in (REPO / "tests").iterdir() if path.is_dir() and not path.name.startswith((".", "_"))}
    assert packages == set(STAGES) - {"cli"}
    # Every stage of the workflow has its rule file, and every rule file is a stage; apply has no rule
    # (ferseq predict / export), the workflow's own tests (the DAG, profiles, SLURM) have their folder, and
    # tests/fixtures holds the real clips and images the tests read (no stage of its own).
    assert rules == packages - {"apply"}
    assert tests == packages | {"workflow", "fixtures"}
    for package in packages:
        docstring = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
        assert docstring and len(docstring) > 80, f"ferseq.{package}: say what the stage turns into what"


def test_the_package_never_imports_snakemake():
    users = [module_name(path) for path in PACKAGE.rglob("*.py")
             if any(isinstance(node, (ast.Import, ast.ImportFrom))
                    and any((getattr(node, "module", None) or alias.name).startswith("snakemake")
                            for alias in node.names)
                    for node in ast.walk(ast.parse(path.read_text())))]
    assert users == []
