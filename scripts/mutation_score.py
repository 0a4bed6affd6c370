"""Read `mutmut results --all true` on stdin; print the mutation score per package and module.

A mutant counts as killed when a test failed or timed out with it; the score is killed over
all mutants (survivors and mutants no test reaches count against it)."""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout"}


def main() -> int:
    per_module: dict[str, Counter[str]] = defaultdict(Counter)
    for line in sys.stdin:
        m = re.match(r"\s*(linguamesh\.[\w.]+?)\.x[ǁ_]\S*__mutmut_\d+: (.+)$", line.rstrip())
        if m:
            per_module[m.group(1)][m.group(2).strip()] += 1
    if not per_module:
        print("no mutmut results (run `mutmut run` first)", file=sys.stderr)
        return 1
    packages: dict[str, Counter[str]] = defaultdict(Counter)
    print(f"{'module':40} {'killed':>7} {'survived':>9} {'no tests':>9} {'score':>7}")
    for module in sorted(per_module):
        c = per_module[module]
        packages[".".join(module.split(".")[:2])].update(c)
        print(_row(module, c))
    print()
    for package in sorted(packages):
        print(_row(package, packages[package]))
    return 0


def _row(name: str, c: Counter[str]) -> str:
    killed = sum(v for k, v in c.items() if k in KILLED)
    total = sum(c.values())
    return (
        f"{name:40} {killed:7} {c['survived']:9} {c['no tests']:9} {100 * killed / total:6.1f}%"
        if total
        else name
    )


if __name__ == "__main__":
    sys.exit(main())
