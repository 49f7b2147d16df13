"""pywork.py - a CPU + allocation heavy stdlib-only Python workload for
scripts/bench (the "real program no one here wrote": CPython itself).

usage: python3 pywork.py RECORDS ROUNDS

Run with PYTHONMALLOC=malloc so every object allocation goes through the C
allocator (and so through whatever LD_PRELOAD interposer is loaded).  Each
round builds RECORDS dicts with strings and lists, sorts them, round-trips
them through json, builds an index, and splits/joins strings.  Deterministic
(fixed random seed); prints a checksum.
"""
import json
import random
import sys

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo "
         "lima mike november oscar papa quebec romeo sierra tango uniform "
         "victor whiskey xray yankee zulu").split()


def one_round(rnd, records):
    recs = []
    for i in range(records):
        recs.append({
            "id": i,
            "name": "user%06d" % rnd.randrange(1_000_000),
            "tags": [rnd.choice(WORDS) for _ in range(rnd.randrange(1, 6))],
            "score": rnd.random(),
            "note": "-".join(rnd.choice(WORDS) for _ in range(3)),
        })
    recs.sort(key=lambda r: (r["name"], r["score"]))
    text = json.dumps(recs)
    back = json.loads(text)
    index = {}
    for r in back:
        for t in r["tags"]:
            index.setdefault(t, []).append(r["id"])
    words = " ".join(r["note"].replace("-", " ") for r in back).split()
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return len(text) + sum(len(v) for v in index.values()) + len(words) + top[0][1]


def main():
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    rnd = random.Random(12345)
    total = 0
    for _ in range(rounds):
        total += one_round(rnd, records)
    print("pywork records=%d rounds=%d checksum=%d" % (records, rounds, total))


if __name__ == "__main__":
    main()
