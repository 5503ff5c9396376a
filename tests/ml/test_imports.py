"""The shape of the imports: no circle inside ``ml``, and the API process loads no training
code (only the serving side and the training presets' names)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINING = (
    "ml.train",
    "ml.fit.loop",
    "ml.fit.finish",
    "ml.fit.pipeline",
    "ml.tutorial",
    "ml.evaluate",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ml_imports(path: Path) -> set[str]:
    """The ``ml`` modules a file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ml"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ml.")}
    return found


def test_no_module_of_ml_imports_itself_through_others() -> None:
    files = {module_name(p): p for p in (ROOT / "ml").rglob("*.py")}
    graph = {m: {i for i in ml_imports(p) if i in files and i != m} for m, p in files.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert circles == [], f"import circles through {circles}"


def test_the_api_loads_no_training_code() -> None:
    code = (
        f"import sys; import app.main; print(','.join(m for m in {TRAINING!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""
