"""How long loading a full-size Dhan instrument master takes (the real one has about 200k rows).

Generates a 200k-row master in Dhan's column layout (equities, futures and options across NSE, BSE and MCX,
plus index and currency rows the loader skips), then times `load_master` and a batch of lookups. Run it with
`.venv/bin/python bench/dhan_instruments.py [ROWS]`; it prints the timings and writes nothing outside a temp dir.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

from tvbridge_brokers.dhan.instruments import REQUIRED_COLUMNS, load_master

HEADER = [
    "SEM_EXM_EXCH_ID",
    "SEM_SEGMENT",
    "SEM_SMST_SECURITY_ID",
    "SEM_INSTRUMENT_NAME",
    "SEM_EXPIRY_CODE",
    "SEM_TRADING_SYMBOL",
    "SEM_LOT_UNITS",
    "SEM_CUSTOM_SYMBOL",
    "SEM_EXPIRY_DATE",
    "SEM_STRIKE_PRICE",
    "SEM_OPTION_TYPE",
    "SEM_TICK_SIZE",
    "SEM_EXPIRY_FLAG",
    "SEM_EXCH_INSTRUMENT_TYPE",
    "SEM_SERIES",
    "SM_SYMBOL_NAME",
]


def generate(path: Path, rows: int) -> int:
    if not set(REQUIRED_COLUMNS) <= set(HEADER):
        raise SystemExit("the generator's header lacks columns the loader needs")
    expiries = [date(2026, 12, 1) + timedelta(days=7 * i) for i in range(12)]
    written = 0
    security_id = 100000
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(HEADER)
        underlying = 0
        while written < rows:
            name = f"SYM{underlying:05d}"
            exchange = ("NSE", "BSE", "MCX")[underlying % 3]
            underlying += 1
            if exchange != "MCX":
                out.writerow(
                    [
                        exchange,
                        "E",
                        security_id,
                        "EQUITY",
                        "",
                        name,
                        "1.0",
                        name,
                        "",
                        "-0.01000",
                        "XX",
                        "5.0000",
                        "NA",
                        "ES",
                        "EQ",
                        name,
                    ]
                )
                security_id += 1
                written += 1
            segment, fut, opt = ("M", "FUTCOM", "OPTFUT") if exchange == "MCX" else ("D", "FUTSTK", "OPTSTK")
            for expiry in expiries:
                stamp = f"{expiry.isoformat()} 14:30:00"
                out.writerow(
                    [
                        exchange,
                        segment,
                        security_id,
                        fut,
                        "1",
                        f"{name}-{expiry:%b%Y}-FUT",
                        "250.0",
                        name,
                        stamp,
                        "-0.01000",
                        "XX",
                        "5.0000",
                        "M",
                        fut,
                        "NA",
                        name,
                    ]
                )
                security_id += 1
                written += 1
                for strike in range(1000, 1000 + 50 * 5, 50):
                    for option_type in ("CE", "PE"):
                        out.writerow(
                            [
                                exchange,
                                segment,
                                security_id,
                                opt,
                                "1",
                                f"{name}-{expiry:%b%Y}-{strike}-{option_type}",
                                "250.0",
                                name,
                                stamp,
                                f"{strike}.00000",
                                option_type,
                                "5.0000",
                                "M",
                                opt,
                                "NA",
                                name,
                            ]
                        )
                        security_id += 1
                        written += 1
            out.writerow(
                [
                    "NSE",
                    "I",
                    security_id,
                    "INDEX",
                    "",
                    f"IDX{underlying}",
                    "1.0",
                    "",
                    "",
                    "-0.01000",
                    "XX",
                    "5.0000",
                    "NA",
                    "INDEX",
                    "NA",
                    "",
                ]
            )
            security_id += 1
            written += 1
    return written


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "api-scrip-master.csv"
        written = generate(path, rows)
        size_mb = path.stat().st_size / 1e6
        parses = []
        for _ in range(3):
            started = time.perf_counter()
            load_master(path, cache=False)
            parses.append(time.perf_counter() - started)
        started = time.perf_counter()
        load_master(path)  # parses and writes the index cache
        first = time.perf_counter() - started
        cached = []
        for _ in range(3):
            started = time.perf_counter()
            master = load_master(path)
            cached.append(time.perf_counter() - started)
        started = time.perf_counter()
        lookups = 10_000
        for i in range(lookups):
            name = f"SYM{(i * 3) % 1401:05d}"  # multiples of 3 are the NSE ones
            master.equity("NSE", name)
            master.future("NSE", name, today=date(2026, 11, 25), expiry=None)
            master.option("NSE", name, expiry=date(2026, 12, 1), strike=Decimal(1100), option_type="CE")
        lookup_s = time.perf_counter() - started
    print(f"master: {written} rows, {size_mb:.1f} MB, {len(master)} tradable")
    print(f"CSV parse + index: best {min(parses):.3f} s, worst {max(parses):.3f} s over {len(parses)} runs")
    print(f"first load (parse + write the index cache): {first:.3f} s")
    print(f"later loads (index cache): best {min(cached):.3f} s, worst {max(cached):.3f} s over {len(cached)} runs")
    print(f"lookups: {3 * lookups} in {lookup_s * 1000:.1f} ms ({lookup_s / (3 * lookups) * 1e6:.2f} us each)")


if __name__ == "__main__":
    main()
