"""Mutation score from `mutmut results --all true`: killed / (tested - equivalent), per module and in
all, with the survivors listed. Equivalent mutants are the backticked names under docs/mutation.md's
"## Equivalent" heading, each with its reason there.

    python3 scripts/mutation_score.py mutants/results.txt docs/mutation.md
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout", "caught by type check"}


def equivalent(doc: str) -> set[str]:
    part = doc.split("## Equivalent", 1)[1] if "## Equivalent" in doc else ""
    part = part.split("\n## ", 1)[0]
    return set(re.findall(r"`([\w.ǁ]+__mutmut_\d+)`", part))


def main(results_path: str, doc_path: str) -> int:
    same = equivalent(open(doc_path, encoding="utf-8").read())
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for line in open(results_path, encoding="utf-8"):
        if ": " not in line:
            continue
        name, status = (s.strip() for s in line.rsplit(": ", 1))
        module = re.match(r"(.*?)\.x(?:ǁ|_)", name).group(1)  # worker.gat.panel.x_fn__mutmut_3 -> the module
        if status == "survived" and name in same:
            status = "equivalent"
        elif status == "survived":
            survivors.append(name)
        by_module[module][status] += 1
    total = Counter()
    print(
        f"{'module':34} {'killed':>7} {'survived':>9} {'equivalent':>11} {'no tests':>9} {'other':>6} {'score':>7}"
    )
    for module in sorted(by_module) + ["all"]:
        c = total if module == "all" else by_module[module]
        if module != "all":
            total.update(c)
        killed = sum(c[s] for s in KILLED)
        other = sum(v for s, v in c.items() if s not in KILLED | {"survived", "equivalent", "no tests"})
        judged = killed + c["survived"] + c["no tests"]
        score = f"{100 * killed / judged:.1f}%" if judged else "-"
        print(
            f"{module:34} {killed:7} {c['survived']:9} {c['equivalent']:11} {c['no tests']:9} {other:6} {score:>7}"
        )
    print("\nscore = killed / (killed + survived + no tests); equivalent ones (docs/mutation.md) left out;")
    print("'other' = not checked, skipped or suspicious (not run to a verdict).")
    if survivors:
        print(f"\n{len(survivors)} survivors (`mutmut show NAME` prints the change):")
        for name in survivors:
            print("  " + name)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
