#!/usr/bin/env python3
"""A test bed of N hosts in Linux network namespaces on one bridge (run as root).

    python scripts/netns.py up 3                  # mesh1..mesh3 at 10.77.0.11..13, bridge meshbr0
    python scripts/netns.py exec 2 -- python3 -c "print('hello from host 2')"
    python scripts/netns.py cut 1                 # host 1 off the network ...
    python scripts/netns.py heal 1                # ... and back
    python scripts/netns.py shape 1 200           # host 1's link: 200 Mbit/s each way (tc tbf)
    python scripts/netns.py throughput 1 2 --bytes 512M
    python scripts/netns.py status
    python scripts/netns.py down                  # kill, delete everything; safe to repeat

Every subcommand takes --prefix (default mesh) and --subnet (default 10.77.0.0/24).
The logic lives in meshcompute/testing/netns.py (importable by tests and benchmarks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshcompute.testing.netns import (  # noqa: E402
    DEFAULT_PREFIX,
    DEFAULT_SUBNET,
    NetnsError,
    TestBed,
    existing,
    measure_tcp_throughput,
    netns_unavailable_reason,
    teardown,
)


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", default=DEFAULT_PREFIX, help="name prefix of namespaces and links (default mesh)")
    common.add_argument("--subnet", default=DEFAULT_SUBNET, help="host i gets address +10+i (default 10.77.0.0/24)")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", parents=[common], help="create N hosts")
    p.add_argument("n", type=int)
    p.add_argument("--replace", action="store_true", help="tear down an existing bed with this prefix first")
    p = sub.add_parser("exec", parents=[common], help="run a command in host I: exec I [--prefix P] -- CMD...")
    p.add_argument("host", type=int)
    for name, text in (("cut", "take host I off the network"), ("heal", "put host I back")):
        sub.add_parser(name, parents=[common], help=text).add_argument("host", type=int)
    p = sub.add_parser("shape", parents=[common], help="limit host I's link to MBIT Mbit/s each way (tc tbf)")
    p.add_argument("host", type=int)
    p.add_argument("mbit", type=float)
    p = sub.add_parser("throughput", parents=[common], help="TCP throughput from host A to host B")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
    p.add_argument("--bytes", type=_size, default=512 << 20, help="how much to move (default 512M)")
    sub.add_parser("status", parents=[common], help="list the bed's namespaces and links")
    sub.add_parser("down", parents=[common], help="kill its processes, delete everything")
    argv = sys.argv[1:] if argv is None else list(argv)
    command: list[str] = []
    if "--" in argv:  # everything after the first -- is the command for `exec`
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if command and args.cmd != "exec":
        parser.error("only exec takes a command after --")

    if args.cmd != "status":
        reason = netns_unavailable_reason()
        if reason:
            print(f"netns: {reason}", file=sys.stderr)
            return 2
    try:
        if args.cmd == "up":
            bed = TestBed(args.n, args.prefix, args.subnet, replace=args.replace).up()
            for i in bed.hosts:
                print(f"host {i}: namespace {bed.namespace(i)}  address {bed.address(i)}  link {bed.veth(i)}")
        elif args.cmd == "down":
            removed = teardown(args.prefix)
            print("removed: " + (" ".join(removed) if removed else "nothing"))
        elif args.cmd == "status":
            namespaces, links = existing(args.prefix)
            print("namespaces:", " ".join(namespaces) or "-")
            print("links:", " ".join(links) or "-")
        else:
            bed = TestBed.attach(args.prefix, args.subnet)
            if args.cmd == "exec":
                if not command:
                    parser.error("exec: give a command after --")
                rc = bed.exec(args.host, command, timeout=None, capture=False).returncode
                return 128 - rc if rc < 0 else rc  # killed by a signal: the shell's convention
            if args.cmd == "cut":
                bed.cut(args.host)
            elif args.cmd == "heal":
                bed.heal(args.host)
            elif args.cmd == "shape":
                bed.shape(args.host, args.mbit)
            elif args.cmd == "throughput":
                mbs = measure_tcp_throughput(bed, args.a, args.b, args.bytes)
                print(f"{args.bytes / (1 << 20):.0f} MiB from host {args.a} to host {args.b}: {mbs:.0f} MB/s")
    except (NetnsError, ValueError) as exc:
        print(f"netns: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
