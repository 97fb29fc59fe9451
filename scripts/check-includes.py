#!/usr/bin/python3
"""Checks the include graph of src/ (issue 22; docs/ARCHITECTURE.md).

Nodes are source files with the extension dropped, so foo.c and foo.h are one
node; edges are the #include "..." lines (system includes <...> are ignored).
Fails (exit 1) on
  - a cycle between nodes (a strongly connected component of more than one
    node, or a node that includes itself through another name), and
  - an include that goes up the layer order of DESIGN.md §4: a file may
    include only files of its own layer or of the layers above it
    (core -> net/msg/spool/metrics -> log -> lua -> smtp -> queue ->
    delivery/http -> main), and
  - an include the layering allows but the design does not (FORBIDDEN).
Also run as the ctest entry lint/check_includes and by scripts/test.sh.
Usage: scripts/check-includes.py [SRC_DIR]   (default: src next to scripts/)
"""
import os
import re
import sys

# Rank of each top-level folder of src/: a lower rank is a higher layer
# (closer to core); a file may include only files of equal or lower rank.
LAYERS = {
    "core": 0,
    "net": 1, "msg": 1, "spool": 1, "metrics": 1,
    "log": 2,
    "lua": 3,
    "smtp": 4,
    "queue": 5,
    "delivery": 6, "http": 6,
    "tsa": 7,
    "main": 8, "modules": 8,
}

# Folder pairs that must not meet although the order would allow it.
FORBIDDEN = {
    ("queue", "smtp"): "the queue engine knows no wire protocol (reception reaches it "
                       "through smtpsrv_set_insert_hook, set by main.c)",
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
SOURCE_EXT = (".c", ".h", ".cc", ".cpp")


def node_of(path):
    """foo.c and foo.h are one node; foo_int.h, the internal header that the
    files of module foo share, belongs to it too."""
    base = os.path.splitext(path)[0]
    if path.endswith("_int.h"):
        base = base[: -len("_int")]
    return base


def layer_of(node):
    top = node.split("/", 1)[0]
    return LAYERS.get(top)


def read_graph(src):
    """Returns {node: {included node: (file, line number)}} and the set of nodes."""
    edges = {}
    nodes = set()
    for dirpath, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(SOURCE_EXT):
                continue
            full = os.path.join(dirpath, f)
            rel = os.path.relpath(full, src)
            node = node_of(rel)
            nodes.add(node)
            with open(full, encoding="utf-8", errors="replace") as fh:
                for lineno, line in enumerate(fh, 1):
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    inc = m.group(1)
                    # "dir/file.h" from src/, or a name beside the including file
                    candidates = [os.path.normpath(inc),
                                  os.path.normpath(os.path.join(os.path.dirname(rel), inc))]
                    target = next((c for c in candidates if os.path.exists(os.path.join(src, c))),
                                  None)
                    if target is None:
                        continue  # generated or outside src/: not part of the graph
                    tnode = node_of(target)
                    if tnode != node:
                        edges.setdefault(node, {}).setdefault(tnode, (rel, lineno))
    return nodes, edges


def cycles(nodes, edges):
    """Tarjan's strongly connected components; returns those with 2+ nodes."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        # iterative, so that deep graphs do not hit the recursion limit
        work = [(v, iter(sorted(edges.get(v, {}))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, {})))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for v in sorted(nodes | set(edges)):
        if v not in index:
            strong(v)
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "src")
    src = os.path.normpath(src)
    nodes, edges = read_graph(src)
    problems = []
    for comp in cycles(nodes, edges):
        members = set(comp)
        lines = []
        for a in comp:
            for b, (f, n) in sorted(edges.get(a, {}).items()):
                if b in members:
                    lines.append(f"    {f}:{n} includes {b}")
        problems.append("include cycle between " + ", ".join(comp) + ":\n" + "\n".join(lines))
    for a in sorted(edges):
        la = layer_of(a)
        for b, (f, n) in sorted(edges[a].items()):
            lb = layer_of(b)
            if la is None or lb is None:
                problems.append(f"{f}:{n}: {a} or {b} is in no known layer (add its folder to "
                                "LAYERS in scripts/check-includes.py and to docs/ARCHITECTURE.md)")
            elif lb > la:
                problems.append(f"{f}:{n}: {a} (layer {a.split('/')[0]}) includes {b}, "
                                f"a lower layer ({b.split('/')[0]})")
            why = FORBIDDEN.get((a.split("/")[0], b.split("/")[0]))
            if why:
                problems.append(f"{f}:{n}: {a} includes {b}: {why}")
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"check-includes: {len(problems)} problem(s) in {src}", file=sys.stderr)
        return 1
    print(f"check-includes: {len(nodes)} files' nodes, no cycle, layers respected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
