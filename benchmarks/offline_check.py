"""Does a command try to reach the outside? Run it in a private network namespace and count.

The command runs (as root) inside a fresh network namespace whose only way out is a veth pair
with an address and a default route, as a machine with a network would have. Every frame that
leaves the namespace is captured on the host end of the pair (an ``AF_PACKET`` socket) and
classified. An idle namespace sends only the interface's own IPv6 announcements (router and
neighbour solicitations, multicast listener reports); an IPv4 packet means the command tried to
reach another machine. The gateway's MAC is a fixed, unused one, so such packets do leave the
namespace (and are listed with protocol, destination and port) but reach nobody.
Exit status 0 when nothing but IPv6 link announcements left, 1 otherwise; the command's own
status is printed.

    sudo .venv/bin/python benchmarks/offline_check.py [--seconds 30] -- COMMAND [ARGS...]
    sudo .venv/bin/python benchmarks/offline_check.py -- make test

Loopback and shared memory inside the namespace work as usual (DDS over SHM, the tests' own
servers on 127.0.0.1); only frames on the veth are counted.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import struct
import subprocess
import sys
import threading
import time

ETH_P_ALL = 0x0003
KINDS = {0x0800: "IPv4", 0x0806: "ARP", 0x86DD: "IPv6"}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def _classify(frame: bytes) -> str:
    if len(frame) < 14:
        return "runt"
    ethertype = struct.unpack("!H", frame[12:14])[0]
    kind = KINDS.get(ethertype, f"0x{ethertype:04x}")
    if kind == "IPv6" and len(frame) >= 54:
        next_header = frame[20]
        if next_header == 58:  # ICMPv6: neighbour discovery, router solicitation
            return "IPv6 ICMPv6 type %d" % frame[54]
        if next_header == 0:  # hop-by-hop: multicast listener reports
            return "IPv6 hop-by-hop (MLD)"
        return f"IPv6 next header {next_header}"
    if kind == "IPv4" and len(frame) >= 34:
        proto = {1: "ICMP", 6: "TCP", 17: "UDP"}.get(frame[23], str(frame[23]))
        dst = socket.inet_ntoa(frame[30:34])
        port = struct.unpack("!H", frame[36:38])[0] if proto in ("TCP", "UDP") else None
        what = f"IPv4 {proto} to {dst}" + (f":{port}" if port else "")
        if proto == "UDP" and port == 53:
            what += f" (DNS query {_dns_name(frame[14 + (frame[14] & 15) * 4 + 8:])})"
        return what
    return kind


def _dns_name(payload: bytes) -> str:
    """The first question's name of a DNS query."""
    labels, i = [], 12
    while i < len(payload) and payload[i]:
        n = payload[i]
        labels.append(payload[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype = struct.unpack("!H", payload[i + 1:i + 3])[0] if i + 3 <= len(payload) else 0
    return ".".join(labels) + {1: " A", 28: " AAAA"}.get(qtype, f" type {qtype}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="keep capturing this long after the command ends (default 0)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give a command after --")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces and a raw socket)")
    tag = f"atdtoff{os.getpid() % 10000}"
    ns, host, inner = tag, f"{tag}h", f"{tag}n"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", host, "up")
        _ip("-n", ns, "addr", "add", "10.213.0.2/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", "10.213.0.1")
        # the gateway's address resolves to a MAC nobody has: IPv4 packets leave the namespace
        # (and are classified with their destination) but no host ever takes them
        _ip("-n", ns, "neigh", "add", "10.213.0.1", "lladdr", "02:00:5e:00:de:ad", "dev", inner,
            "nud", "permanent")
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((host, 0))
        sock.settimeout(0.2)
        counts: collections.Counter = collections.Counter()
        sizes: collections.Counter = collections.Counter()
        stop = threading.Event()

        def capture() -> None:
            while not stop.is_set():
                try:
                    frame, addr = sock.recvfrom(65535)
                except socket.timeout:
                    continue
                if addr[2] == socket.PACKET_OUTGOING:  # sent by the host end, not the namespace
                    continue
                kind = _classify(frame)
                counts[kind] += 1
                sizes[kind] += len(frame)

        thread = threading.Thread(target=capture, daemon=True)
        thread.start()
        started = time.monotonic()
        status = subprocess.run(["ip", "netns", "exec", ns, *command]).returncode
        time.sleep(args.seconds)
        stop.set()
        thread.join()
        elapsed = time.monotonic() - started
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "link", "del", host], check=False, stderr=subprocess.DEVNULL)
    print(f"\ncommand: {' '.join(command)} -> exit {status}, {elapsed:.0f} s")
    print(f"{'frames leaving the namespace':44s} {'count':>6s} {'bytes':>8s}")
    for kind in sorted(counts):
        print(f"{kind:44s} {counts[kind]:6d} {sizes[kind]:8d}")
    outside = {k: v for k, v in counts.items() if not k.startswith("IPv6")}
    if outside:
        print(f"RESULT: the command tried to reach the outside ({sum(outside.values())} "
              f"IPv4/ARP/other frames)")
        return 1
    print(f"RESULT: nothing left but IPv6 link announcements ({sum(counts.values())} frames, "
          f"{sum(sizes.values())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
