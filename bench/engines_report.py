#!/usr/bin/env python3
"""engines_report: the table bench/engines.sh prints, from its results.jsonl."""
import argparse
import json


def load(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                d = json.loads(line)
                out[d["label"]] = d
    return out


def fmt_us(us):
    if us is None:
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.1f}x"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--json")
    args = ap.parse_args()
    r = load(args.results)
    med = lambda label: r.get(label, {}).get("median_us")
    rows = [
        ("cat /proc/meminfo", "cat-meminfo"),
        ("  the same after 1 s idle", "catgap-meminfo"),
        ("cat /proc/1/status", "cat-status"),
        ("cat sysfs file", "cat-sysfs"),
        ("ls -l /proc", "ls-proc"),
        ("grep -r /proc/sys/kernel", "grep-kernel"),
        ("grep -r /proc/sys", "grep-sys"),
    ]
    head = ["operation (median)", "native", "mailbox", "trap", "qemu-ga", "ssh reused",
            "ssh new", "mailbox/native", "trap/native", "qemu-ga/mailbox", "ssh/mailbox"]
    table = []
    for title, key in rows:
        native, mailbox, trap = med("native-" + key), med("mailbox-" + key), med("trap-" + key)
        qga = med("qga-" + key)
        ssh_r, ssh_n = med("ssh-reused-" + key), med("ssh-new-" + key)
        table.append([title, fmt_us(native), fmt_us(mailbox), fmt_us(trap), fmt_us(qga),
                      fmt_us(ssh_r), fmt_us(ssh_n), ratio(mailbox, native), ratio(trap, native),
                      ratio(qga, mailbox), ratio(ssh_r, mailbox)])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    print(line(head))
    for t in table:
        print(line(t))
    files = r.get("native-grep-sys", {}).get("extra")
    if files:
        print(f"(grep -r /proc/sys reads {files} files in the guest)")

    spins = {k: r[k]["per_second"] for k in r if k.startswith("spin-")}
    base = [spins[k] for k in ("spin-unmonitored-before", "spin-unmonitored-after") if k in spins]
    if base:
        b = sum(base) / len(base)
        print("\nguest CPU-bound loop (iterations/s; loss against unmonitored, mean of before/after "
              f"= {b:.3g}; the two differ by {abs(base[0] - base[-1]) / b * 100:.1f}%)")
        for k in ("spin-unmonitored-before", "spin-idle-attached", "spin-1-read-per-second",
                  "spin-during-sweep", "spin-unmonitored-after"):
            if k in spins:
                cpu = r[k].get("shadow_cpu_percent")
                shadow = f"   shadow used {cpu:.2f}% of a vCPU" if cpu is not None else ""
                print(f"  {k[5:]:<24} {spins[k]:.4g}   {(1 - spins[k] / b) * 100:+.2f}% loss"
                      + shadow)

    for engine in ("mailbox", "trap"):
        a, z = r.get(engine + "-stats-attached", {}), r.get(engine + "-stats", {})
        after = r.get(engine + "-stats-after", z)
        if "vm_stops" in a and "vm_stops" in after:
            print(f"\n{engine}: {after['vm_stops'] - a['vm_stops']} VM stops after attach over "
                  f"{after.get('batches', 0) - a.get('batches', 0)} batches; attach cost "
                  f"{a.get('bootstrap_vm_stops')} stops, {a.get('bootstrap_ms')} ms"
                  + (f"; round trip p50 {after.get('mailbox_round_trip_p50_us')} us, "
                     f"p99 {after.get('mailbox_round_trip_p99_us')} us"
                     if engine == "mailbox" else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": r, "table": [dict(zip(head, t)) for t in table]}, f, indent=1)


if __name__ == "__main__":
    main()
