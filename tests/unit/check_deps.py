#!/usr/bin/env python3
"""Dependency check of the core: the graph of the object files of hooks/ and
preload/, computed from their symbols (nm), must have no cycle.

An object A depends on B when A uses (nm: U) a symbol B defines. A cycle is
printed as `a.o -> b.o -> ... -> a.o`, each edge with one symbol that makes it.
Usage: check_deps.py BUILD_DIR [--print]   (--print: the whole graph too)
"""
import glob
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", "--defined-only", "-g", obj], capture_output=True, text=True, check=True).stdout
    defined = {l.split()[-1] for l in out.splitlines() if len(l.split()) >= 3}
    out = subprocess.run(["nm", "-u", obj], capture_output=True, text=True, check=True).stdout
    used = {l.split()[-1] for l in out.splitlines() if l.split()}
    return defined, used


def graph(objs):
    syms = {o: symbols(o) for o in objs}
    owner = {}
    for o, (d, _) in syms.items():
        for s in d:
            owner.setdefault(s, o)
    g = {o: {} for o in objs}
    for o, (_, u) in syms.items():
        for s in sorted(u):
            b = owner.get(s)
            if b and b != o:
                g[o].setdefault(b, s)
    return g


def find_cycle(g):
    """One cycle as a list of nodes (first == last), or None (iterative DFS)."""
    color = {n: 0 for n in g}
    for root in sorted(g):
        if color[root]:
            continue
        stack, path = [(root, iter(sorted(g[root])))], [root]
        color[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[node] = 2
                stack.pop()
                path.pop()
            elif color[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif color[nxt] == 0:
                color[nxt] = 1
                stack.append((nxt, iter(sorted(g[nxt]))))
                path.append(nxt)
    return None


def main():
    build = sys.argv[1]
    objs = sorted(glob.glob(os.path.join(build, "hooks", "libckpt_hooks.a.p", "**", "*.o"), recursive=True)
                  + glob.glob(os.path.join(build, "preload", "libckpt.so.p", "**", "*.o"), recursive=True))
    if len(objs) < 3:
        print("no object files found under", build)
        return 1
    g = graph(objs)
    name = lambda o: os.path.relpath(o, build).replace("libckpt_hooks.a.p/", "").replace("libckpt.so.p/", "")
    if "--print" in sys.argv:
        for o in sorted(g):
            print(name(o), "->", " ".join(sorted(name(b) for b in g[o])))
    cyc = find_cycle(g)
    if cyc:
        print("dependency cycle among object files:")
        for a, b in zip(cyc, cyc[1:]):
            print("  %s -> %s   (%s)" % (name(a), name(b), g[a][b]))
        return 1
    print("no dependency cycle among %d object files" % len(objs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
