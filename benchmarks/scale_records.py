"""A run directory of any size, made from a real run's records, for the post-run cost benchmark.

The records of a recorded run (its manifest copied beside them) are repeated until ``--records`` are
written, each copy with its own sequence number, request id and offsets moved on by the source run's
span, so the figures of the large run are the source's, repeated::

    infermeter run chat --requests 10000 --concurrency 64 --backend sim --out /tmp/chat-10k
    python benchmarks/scale_records.py /tmp/chat-10k /tmp/chat-1m --records 1000000

Then time the commands on it (``/usr/bin/time -v`` gives the peak RSS)::

    /usr/bin/time -v infermeter summarize /tmp/chat-1m
    /usr/bin/time -v infermeter analyze /tmp/chat-1m --no-semscore --out /tmp/chat-1m-analysis
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def _span_ms(rows: list[dict[str, object]]) -> float:
    ends = [float(str(r["sent_offset_ms"])) + float(str(r.get("e2e_ms") or 0)) for r in rows]
    return max(ends) + 1.0


def make(source: Path, out: Path, records: int) -> None:
    """Write ``records`` records into ``out`` (with the source's manifest), repeating the source's."""
    rows = [json.loads(line) for line in (source / "records.jsonl").read_bytes().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{source}/records.jsonl holds no records")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "manifest.json", out / "manifest.json")
    span = _span_ms(rows)
    with (out / "records.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(records):
            copy, row = divmod(i, len(rows))
            r = dict(rows[row])
            if copy:
                r["stage"], r["is_warmup"], r["cold_start"], r["cold_cause"] = "steady", False, False, None
            r["seq"] = i
            r["request_id"] = f"{r['request_id']}-{copy}"
            for key in ("intended_offset_ms", "sent_offset_ms"):
                r[key] = float(str(r[key])) + copy * span
            r["sent_unix_s"] = float(str(r["sent_unix_s"])) + copy * span / 1000
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")
            if i and i % 100_000 == 0:
                print(f"{i:,} records", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a run directory written by `infermeter run`")
    ap.add_argument("out", type=Path, help="the run directory to write")
    ap.add_argument("--records", type=int, default=1_000_000)
    args = ap.parse_args()
    make(args.source, args.out, args.records)


if __name__ == "__main__":
    main()
