"""Write examples/churn.csv, the data set `mlbus demo` trains on (deterministic).

uv run python scripts/make_demo_data.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS = 2000
OUT = Path(__file__).resolve().parent.parent / "examples" / "churn.csv"


def main() -> None:
    rng = np.random.default_rng(20261201)
    tenure = rng.integers(1, 72, ROWS)
    charges = np.round(rng.normal(65, 20, ROWS).clip(15, 130), 2)
    calls = rng.poisson(1.5, ROWS)
    contract = rng.choice([1, 12, 24], ROWS, p=[0.5, 0.3, 0.2])
    usage = np.round(rng.gamma(2.0, 15.0, ROWS), 1)
    late = rng.poisson(0.4, ROWS)
    score = (
        -0.05 * tenure
        + 0.03 * charges
        + 0.6 * calls
        - 0.08 * contract
        - 0.01 * usage
        + 0.8 * late
        - 1.2
        + rng.normal(0, 0.8, ROWS)
    )
    churned = (score > 0).astype(int)
    header = (
        "tenure_months,monthly_charges,support_calls,contract_months,usage_gb,late_payments,churned"
    )
    lines = [header] + [
        f"{t},{c},{k},{m},{u},{lp},{y}"
        for t, c, k, m, u, lp, y in zip(
            tenure, charges, calls, contract, usage, late, churned, strict=True
        )
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({ROWS} rows, {churned.mean():.0%} churned)")


if __name__ == "__main__":
    main()
