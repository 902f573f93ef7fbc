"""Policy evaluation rate: decisions per second for policies of 10 and 1,000 statements.

Pure CPU (no NATS): each decision evaluates roles, a dotted action and a
dotted resource against every statement, as the session does for each
resource of each agent command; statements are indexed by role, so a
decision only walks the statements that can apply to the agent's roles.
Run: ``.venv/bin/python bench/bench_policy.py``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plantangenet.domain.policy import Condition, Policy, Statement


def make_policy(size: int, rng: random.Random) -> Policy:
    statements = []
    for i in range(size):
        effect = "deny" if i % 10 == 9 else "allow"
        statements.append(
            Statement(
                id=f"s{i}",
                effect=effect,  # type: ignore[arg-type]
                actions=(rng.choice(["cursor.*", "cursor.move", "metadata.change", "*"]),),
                resources=(f"axis.zone{i}.*", f"axis.zone{i}.t{i % 7}"),
                roles=(f"role{i % 20}",),
                conditions=(Condition("hour", "ge", 0),) if i % 3 == 0 else (),
            )
        )
    return Policy(tuple(statements), 1)


def bench(size: int, decisions: int, repeats: int) -> tuple[float, float]:
    rng = random.Random(size)
    policy = make_policy(size, rng)
    requests = [
        (
            (f"role{rng.randrange(20)}",),
            rng.choice(["cursor.move", "cursor.add", "metadata.change"]),
            f"axis.zone{rng.randrange(size)}.t{rng.randrange(7)}",
        )
        for _ in range(1000)
    ]
    context = {"hour": 12}
    rates, allowed_share = [], 0.0
    for _ in range(repeats):
        allowed = 0
        start = time.perf_counter()
        for n in range(decisions):
            roles, action, resource = requests[n % 1000]
            allowed += policy.evaluate(roles, action, resource, context).allowed
        rates.append(decisions / (time.perf_counter() - start))
        allowed_share = allowed / decisions
    return statistics.median(rates), allowed_share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'statements':>10}  {'decisions/s':>12}  {'µs/decision':>12}  allowed")
    for size, decisions in ((10, 200_000), (1000, 5_000)):
        rate, share = bench(size, decisions, args.repeats)
        print(f"{size:>10}  {rate:>12,.0f}  {1e6 / rate:>12.2f}  {share:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
