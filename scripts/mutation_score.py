"""Mutation score from `mutmut results --all true`: killed / (tested - equivalent), per module and in
all, with the survivors listed. Equivalent mutants are the backticked names under docs/mutation.md's
"## Equivalent" heading, each with its reason there.

    python3 scripts/mutation_score.py mutants/results.txt docs/mutation.md
    python3 scripts/mutation_score.py docs/mutation-results.txt mutants/results.txt docs/mutation.md \
        --merged docs/mutation-results.txt

Several results files are merged in order: a later file's verdict on a mutant replaces an earlier
one, except "not checked" (a run that did not reach it keeps the verdict of the run that did).
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout", "caught by type check"}


def equivalent(doc: str) -> set[str]:
    part = doc.split("## Equivalent", 1)[1] if "## Equivalent" in doc else ""
    part = part.split("\n## ", 1)[0]
    return set(re.findall(r"`([\w.ǁ]+__mutmut_\d+)`", part))


def merge(paths: list[str]) -> dict[str, str]:
    verdicts: dict[str, str] = {}
    for path in paths:
        for line in open(path, encoding="utf-8"):
            if ": " in line:
                name, status = (s.strip() for s in line.rsplit(": ", 1))
                if status != "not checked" or name not in verdicts:
                    verdicts[name] = status
    return verdicts


def print_sample(path: str, verdicts: dict[str, str], same: set[str]) -> None:
    """The kill rate of a random sample of mutants with its 95 % Wilson interval: an estimate for the
    population it was drawn from (docs/mutation.md says which), never a verdict on the rest."""
    names = [line.strip() for line in open(path, encoding="utf-8") if line.strip()]
    got = Counter("equivalent" if n in same else verdicts.get(n, "not checked") for n in names)
    k = sum(got[s] for s in KILLED)
    n = k + got["survived"] + got["no tests"]
    print(f"\nsample {path}: {len(names)} mutants, {dict(sorted(got.items()))}")
    if not n:
        return
    z, p = 1.96, k / n if n else 0.0
    centre, half = (
        (p + z * z / (2 * n)) / (1 + z * z / n),
        z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n),
    )
    print(
        f"  killed {k} of {n} judged = {100 * p:.1f}% [95 % Wilson {100 * (centre - half):.1f}, {100 * (centre + half):.1f}]"
    )


def main(*args: str) -> int:
    args_, merged, sample = list(args), None, None
    for flag in ("--merged", "--sample"):
        if flag in args_:
            i = args_.index(flag)
            merged, sample = (args_[i + 1], sample) if flag == "--merged" else (merged, args_[i + 1])
            del args_[i : i + 2]
    *results_paths, doc_path = args_
    verdicts = merge(results_paths)
    if merged:
        with open(merged, "w", encoding="utf-8") as f:
            f.writelines(f"    {name}: {status}\n" for name, status in verdicts.items())
    same = equivalent(open(doc_path, encoding="utf-8").read())
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for name, status in verdicts.items():
        module = re.match(r"(.*?)\.x(?:ǁ|_)", name).group(1)  # worker.gat.panel.x_fn__mutmut_3 -> the module
        if status == "survived" and name in same:
            status = "equivalent"
        elif status == "survived":
            survivors.append(name)
        by_module[module][status] += 1
    total = Counter()
    print(
        f"{'module':34} {'killed':>7} {'survived':>9} {'equivalent':>11} {'no tests':>9} {'other':>6} {'score':>7}"
        f" {'of all':>7}"
    )
    for module in sorted(by_module) + ["all"]:
        c = total if module == "all" else by_module[module]
        if module != "all":
            total.update(c)
        killed = sum(c[s] for s in KILLED)
        other = sum(v for s, v in c.items() if s not in KILLED | {"survived", "equivalent", "no tests"})
        judged = killed + c["survived"] + c["no tests"]
        score = f"{100 * killed / judged:.1f}%" if judged else "-"
        every = f"{100 * killed / (judged + other):.1f}%" if judged + other else "-"
        print(
            f"{module:34} {killed:7} {c['survived']:9} {c['equivalent']:11} {c['no tests']:9} {other:6} {score:>7}"
            f" {every:>7}"
        )
    print("\nscore = killed / (killed + survived + no tests); equivalent ones (docs/mutation.md) left out;")
    print(
        "'other' = not checked, skipped or suspicious (not run to a verdict); 'of all' counts them as not killed."
    )
    if sample:
        print_sample(sample, verdicts, same)
    if survivors:
        print(f"\n{len(survivors)} survivors (`mutmut show NAME` prints the change):")
        for name in survivors:
            print("  " + name)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
