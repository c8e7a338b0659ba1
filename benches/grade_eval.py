"""LLM relevance grading (`tandem grade`) on the hand-written ESCI set, scored as
ebrm_eval scores EBRM: nDCG with gains E 1, S 0.1, C 0.01, I 0, and the share of
(E, non-E) pairs ordered right, ranking each query's items by the expected grade.

Usage: python3 benches/grade_eval.py MODEL [--split dev|held|all] [--tandem PATH]
Items are sent as title plus attributes, never with their label or `why`.
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile

GAIN = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}


def ndcg(labels_by_rank):
    dcg = sum(GAIN[l] / math.log2(i + 2) for i, l in enumerate(labels_by_rank))
    ideal = sorted(labels_by_rank, key=lambda l: -GAIN[l])
    idcg = sum(GAIN[l] / math.log2(i + 2) for i, l in enumerate(ideal))
    return dcg / idcg if idcg > 0 else None


def pairwise(scores, labels):
    good = total = 0.0
    for s, l in zip(scores, labels):
        if l != "E":
            continue
        for t, m in zip(scores, labels):
            if m == "E":
                continue
            total += 1
            good += 1.0 if s > t else 0.5 if s == t else 0.0
    return good / total if total else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--tandem", default="target/release/tandem")
    ap.add_argument("--set", default="ebrm/eval/esci-hand.jsonl")
    args = ap.parse_args()
    ndcgs, pairs, by_lang = [], [], {}
    for line in open(args.set):
        q = json.loads(line)
        if args.split != "all" and q["split"] != args.split:
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
            for item in q["items"]:
                shown = {k: v for k, v in item.items() if k not in ("label", "why")}
                f.write(json.dumps(shown, ensure_ascii=False) + "\n")
            f.flush()
            out = subprocess.run(
                [args.tandem, "grade", "--model", args.model, "--backend", "cpu", "--query", q["query"], "--items", f.name],
                capture_output=True, text=True, check=True,
            ).stdout
        graded = [json.loads(l) for l in out.splitlines()]
        scores = [g["expected_grade"] for g in graded]
        labels = [i["label"] for i in q["items"]]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        n, p = ndcg([labels[i] for i in order]), pairwise(scores, labels)
        if n is not None:
            ndcgs.append(n)
            by_lang.setdefault(q["lang"], []).append(n)
        if p is not None:
            pairs.append(p)
        print(f"{q['query_id']:3} {q['lang']} nDCG {n if n is None else round(n, 3)}  {q['query']}", file=sys.stderr)
    mean = lambda v: sum(v) / len(v) if v else float("nan")
    print(json.dumps({
        "model": args.model, "split": args.split, "queries": len(ndcgs),
        "ndcg": round(mean(ndcgs), 3), "pairwise": round(mean(pairs), 3),
        "ndcg_by_lang": {k: round(mean(v), 3) for k, v in by_lang.items()},
    }))


if __name__ == "__main__":
    main()
