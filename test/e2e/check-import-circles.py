"""No import circle among the xtask's modules: module A imports B when a non-test line of a
file of A (xtask/src/A.rs, or a file under xtask/src/A/) names `crate::B`, in a path or in a
`use crate::{...}` list. Run from the repository's root; prints each module's imports, and
exits 1 naming every circle (each as the modules it ties)."""
import pathlib
import re
import sys

src = pathlib.Path("xtask/src")
imports = {}
for f in sorted(src.rglob("*.rs")):
    parts = f.relative_to(src).parts
    module = parts[0].removesuffix(".rs")
    if module == "main" or f.name == "tests.rs":
        continue
    text = f.read_text().split("#[cfg(test)]")[0]
    names = set(re.findall(r"crate::([a-z_]+)", text))
    for block in re.findall(r"use crate::\{(.*?)\};", text, re.S):
        depth, name = 0, ""
        for ch in block + ",":
            depth += (ch == "{") - (ch == "}")
            if depth == 0 and ch == ",":
                names.add(name.strip().split("::")[0])
                name = ""
            elif depth == 0 and ch != "}":
                name += ch
    imports.setdefault(module, set()).update(n for n in names if n and n not in (module, "self"))

# Tarjan's strongly connected components: a component of more than one module is a circle.
index, low, stack, on_stack, circles = {}, {}, [], set(), []


def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(imports[v] & imports.keys()):
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while not component or component[-1] != v:
            component.append(stack.pop())
            on_stack.discard(component[-1])
        if len(component) > 1:
            circles.append(sorted(component))


sys.setrecursionlimit(10_000)
for module in sorted(imports):
    if module not in index:
        visit(module)
for module in sorted(imports):
    print(f"{module}: {', '.join(sorted(imports[module] & imports.keys())) or '-'}")
for circle in circles:
    print(f"import circle: {' <-> '.join(circle)}", file=sys.stderr)
sys.exit(1 if circles else 0)
