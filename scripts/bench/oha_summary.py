"""Reads oha's JSON report on stdin; prints: requests/s, p50 ms, p99 ms, status codes."""
import json
import sys

d = json.load(sys.stdin)
s = d["summary"]
p = d["latencyPercentiles"]
codes = ",".join(f"{k}:{v}" for k, v in sorted(d.get("statusCodeDistribution", {}).items()))
print(f"{s['requestsPerSec']:.0f} {p['p50'] * 1000:.2f} {p['p99'] * 1000:.2f} {codes}")
