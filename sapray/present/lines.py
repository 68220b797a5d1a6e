"""One-line console messages of the jobs: what a round of the race did."""

from __future__ import annotations

from collections.abc import Callable


def round_line(record: dict, confidence: float, epsilon: float, label: str = "mean SAP") -> str:
    """One console line per round: who leads (by ``label``, the race's statistic), who was dropped and why."""
    leader = record["leader"]
    if leader is None:
        return f"round {record['round']}: no candidate could be scored yet"
    line = (f"round {record['round']}: {record['questions']} questions, {len(record['mean_sap'])} strategies; "
            f"leading {leader} ({label} {record['mean_sap'][leader]:.3f})")
    for name in record["eliminated"]:
        worse = record["intervals"][name]["lo"]
        line += (f"; dropped {name} (worse than {leader} by >= {worse:.3f} {label.removeprefix('mean ')}, more "
                 f"than {epsilon:.0%}; "
                 f"{confidence:.0%} confidence)")
    if record.get("good_enough"):
        line += f"; {leader} is good enough (within {epsilon:.0%} of the best, {confidence:.0%} confidence)"
    return line


def round_lines(on_round: Callable[[str], None] | None, confidence: float,
                epsilon: float, label: str = "mean SAP") -> Callable[[dict], None] | None:
    """What each look of the race tells ``on_round``: its ``round_line``."""
    if on_round is None:
        return None
    return lambda record: on_round(round_line(record, confidence, epsilon, label))
