"""Phone-number detection: false positives on number-like strings and recall on real formats.

Compares the regex lakecurate used until issue 18 (a run of 7-15 digits with phone punctuation)
with libphonenumber (``phonenumbers``) at two leniencies, on ``plant.NOT_PHONES`` (scores, sizes,
ISBNs, dates, prices, ...) and ``plant.REAL_PHONES`` (several regions, international and national
formats); then the caption-signal throughput on Flickr8k captions. Prints markdown.

    python scripts/eval_pii.py [--data ../shared/data/flickr8k]
"""

from __future__ import annotations

import argparse
import csv
import re
import time
from pathlib import Path

import lakecurate.signals as sig
from lakecurate.plant import NOT_PHONES, REAL_PHONES

# The regex phone detector lakecurate shipped before issue 18 (the baseline), as it was.
_OLD = re.compile(r"(?<![\w@.])\+?\(?\d[\d\s().\-]{5,}\d(?![\w@])")


def old_phones(text: str) -> list[str]:
    out = []
    for m in _OLD.finditer(text):
        s = m.group().strip(" .-/")
        if 7 <= sum(c.isdigit() for c in s) <= 15 and not re.fullmatch(r"\d{1,4}([./-])\d{1,2}\1\d{1,4}", s):
            out.append(s)
    return out


def with_leniency(name: str):
    def find(text: str) -> list[str]:
        before, sig.PHONE_LENIENCY = sig.PHONE_LENIENCY, name
        try:
            return sig.phone_numbers(text)
        finally:
            sig.PHONE_LENIENCY = before
    return find


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k"))
    args = ap.parse_args()
    detectors = {"regex (before)": old_phones, "phonenumbers VALID": with_leniency("VALID"),
                 f"phonenumbers {sig.PHONE_LENIENCY} (shipped)": sig.phone_numbers}
    print("| string (not a phone) | " + " | ".join(detectors) + " |")
    print("| --- |" + " --- |" * len(detectors))
    fp = dict.fromkeys(detectors, 0)
    for t in NOT_PHONES:
        cells = []
        for name, find in detectors.items():
            got = find(t)
            fp[name] += bool(got)
            cells.append(", ".join(f"`{g}`" for g in got) or "-")
        print(f"| {t} | " + " | ".join(cells) + " |")
    print("| **strings flagged** | " + " | ".join(f"**{fp[n]} of {len(NOT_PHONES)}**" for n in detectors) + " |")
    numbers = [(r, n) for r, ns in REAL_PHONES.items() for n in ns]
    hits = {name: sum(find(f"call {n} today") == [n] for _, n in numbers) for name, find in detectors.items()}
    print("| **real numbers found** (" + ", ".join(REAL_PHONES) + ") | "
          + " | ".join(f"**{hits[n]} of {len(numbers)}**" for n in detectors) + " |")
    for name, find in detectors.items():
        missed = [n for _, n in numbers if find(f"call {n} today") != [n]]
        if missed:
            print(f"\n{name} missed: {', '.join(missed)}")

    caps_file = Path(args.data) / "captions.csv"
    if caps_file.is_file():
        with caps_file.open(newline="", encoding="utf-8") as fh:
            caps = [r["caption"] for r in csv.DictReader(fh)]
        caps = caps + [f"{c} call {n}" for c, (_, n) in zip(caps, numbers * 200)][: len(caps) // 10]
        for name in ("regex (before)", "shipped"):
            if name.startswith("regex"):
                keep, sig.phone_numbers = sig.phone_numbers, old_phones
            t0 = time.perf_counter()
            sig.caption_signals(caps)
            dt = time.perf_counter() - t0
            if name.startswith("regex"):
                sig.phone_numbers = keep
            print(f"\ncaption signals, {name}: {len(caps)} captions (10% with a phone number) in {dt:.2f} s = "
                  f"{len(caps) / dt:,.0f} rows/s (one core)")
    else:
        print(f"\n(no captions at {caps_file}: throughput skipped)")


if __name__ == "__main__":
    main()
