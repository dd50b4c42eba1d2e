"""Write the settings tables into the service READMEs and libs/core/README.md from the code.

The tables sit between ``<!-- settings-table:begin -->`` and ``<!-- settings-table:end -->``.
``--check`` exits 1 when a README is out of date (CI runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mlbus.core.settings import SHARED_SECTIONS, settings_table
from mlbus.sdk.local.stack import SERVICES

ROOT = Path(__file__).resolve().parent.parent
MARKERS = re.compile(
    r"(<!-- settings-table:begin -->\n).*?(<!-- settings-table:end -->)", re.DOTALL
)


def service_section(spec_name: str) -> str:
    spec = next(s for s in SERVICES if s.name == spec_name)
    own = settings_table(spec.settings_class(), own_only=True)
    return (
        f"{own}\n\nShared settings (Kafka, storage, telemetry, logging, gRPC) are set once for "
        "the whole stack; see [libs/core/README.md](../../libs/core/README.md#settings).\n"
    )


def shared_section() -> str:
    parts = []
    for cls in SHARED_SECTIONS:
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        parts.append(f"### {cls.__name__}\n\n{doc}\n\n{settings_table(cls)}\n")
    return "\n".join(parts)


def render(path: Path, body: str) -> tuple[str, str]:
    text = path.read_text()
    if not MARKERS.search(text):
        raise SystemExit(f"{path}: settings-table markers missing")
    return text, MARKERS.sub(lambda m: m.group(1) + body + m.group(2), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail instead of writing")
    args = parser.parse_args()
    targets = [(ROOT / "libs/core/README.md", shared_section())]
    targets += [
        (ROOT / "services" / s.name / "README.md", service_section(s.name)) for s in SERVICES
    ]
    stale = []
    for path, body in targets:
        old, new = render(path, body)
        if old != new:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("settings tables out of date (run `make docs`):", *stale, sep="\n  ")
        return 1
    if not args.check:
        print(f"updated {len(stale)} README(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
