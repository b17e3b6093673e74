"""Checks that seamless_snapshot.pyi names exactly what the compiled module has.

Compares, in the installed module: the public module-level names
(``__all__``), each class's public attributes and methods, and each class's
bases. Exits 1 listing every difference.

    python check_stub.py path/to/seamless_snapshot.pyi
"""

import ast
import sys

import seamless_snapshot as ss


def public(name: str) -> bool:
    return not name.startswith("_") or name == "__version__"


def stub_names(tree: ast.Module):
    names, classes = set(), {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            bases = [ast.unparse(b).split(".")[-1] for b in node.bases]
            classes[node.name] = ({m for m in members if public(m)}, bases)
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if public(n)}, classes


def main(path: str) -> int:
    with open(path) as f:
        names, classes = stub_names(ast.parse(f.read(), path))
    problems = []
    runtime = set(ss.__all__)
    # dir() must add nothing public beyond __all__ but the native submodule.
    extra_dir = {n for n in dir(ss) if public(n)} - runtime - {"seamless_snapshot"}
    for n in sorted(runtime - names):
        problems.append(f"module has {n}, the stub does not")
    for n in sorted(names - runtime):
        problems.append(f"the stub has {n}, the module does not")
    for n in sorted(extra_dir):
        problems.append(f"module attribute {n} is not in __all__")
    for name, (members, bases) in sorted(classes.items()):
        cls = getattr(ss, name, None)
        if not isinstance(cls, type):
            continue
        got_bases = [b.__name__ for b in cls.__bases__ if b is not object]
        if got_bases != bases:
            problems.append(f"{name}: bases {got_bases} in the module, {bases} in the stub")
        if issubclass(cls, BaseException):
            # Exceptions get their attributes when raised (``code`` and
            # ``kind`` are class attributes of the generated subclasses):
            # only their names and bases are compared.
            continue
        have = {m for m in vars(cls) if public(m)}
        for m in sorted(have - members):
            problems.append(f"{name}.{m} is in the module, not in the stub")
        for m in sorted(members - have):
            problems.append(f"{name}.{m} is in the stub, not in the module")
    for p in problems:
        print(f"check_stub: {p}", file=sys.stderr)
    if not problems:
        print(f"check_stub: {path} matches the module ({len(names)} names, {len(classes)} classes)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
