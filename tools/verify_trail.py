#!/usr/bin/env python3
"""Verify a Sluice audit trail without Sluice.

    sluice audit dump --data-dir DIR --output trail.jsonl
    python3 tools/verify_trail.py --key-file initial.key trail.jsonl

Implements the chain as crates/sluice-audit/README.md ("The chain",
"Checkpoints") defines it, with Python's standard library only; the
checkpoints' Ed25519 signatures are checked when the `cryptography` package
is installed (`--require-signatures` makes that mandatory). Per chain of the
key file: every checkpoint's signature; the start (after the latest `cut`
checkpoint, else seq 1); each record in seq order: no gap, the ULID's time
equal to `time_ms`, the body's SHA-256 equal to `digest` and its code and
environment equal to the header's, a removed body only under a `retention`
checkpoint covering it, the MAC chained to the previous record, every
checkpoint at that seq carrying that MAC; and the chain reaching its highest
signed checkpoint.

Exit status: 0 intact; 1 naming the first bad record
(`chain C seq N (ulid U): WHAT`); 2 when the input cannot be read.
"""

import argparse
import hashlib
import hmac
import json
import struct
import sys

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
I64_MIN = -(2**63)


class Bad(Exception):
    """The trail is not intact: names the chain, seq and what."""

    def __init__(self, chain, seq, ulid, what):
        super().__init__(f"chain {chain} seq {seq}" + (f" (ulid {ulid})" if ulid else "") + f": {what}")


def canonical(*fields):
    """Each field as a big-endian u32 length and its bytes."""
    return b"".join(struct.pack(">I", len(b)) + b for b in fields)


def canonical_record(r):
    return canonical(
        b"sluice-audit-record-v1",
        r["chain"].encode(),
        struct.pack(">Q", r["seq"]),
        r["ulid"].encode(),
        struct.pack(">q", r["time_ms"]),
        r["code"].encode(),
        r["environment"].encode(),
        bytes.fromhex(r["digest"]),
    )


def canonical_checkpoint(c):
    before = c.get("before_ms")
    return canonical(
        b"sluice-audit-checkpoint-v1",
        c["chain"].encode(),
        struct.pack(">Q", c["seq"]),
        bytes.fromhex(c["mac"]),
        struct.pack(">q", c["time_ms"]),
        c["reason"].encode(),
        (c.get("environment") or "").encode(),
        struct.pack(">q", I64_MIN if before is None else before),
    )


def ulid_time(ulid):
    if len(ulid) != 26:
        return None
    v = 0
    for ch in ulid.upper():
        d = CROCKFORD.find(ch)
        if d < 0:
            return None
        v = (v << 5) | d
    return v >> 80


def read_keys(path):
    keys = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 3:
                raise ValueError(f"{path}: expected '<chain> <initial key> <public key>', found {line.strip()!r}")
            keys[parts[0]] = (bytes.fromhex(parts[1]), bytes.fromhex(parts[2]))
    return keys


def signature_checker(require):
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        if require:
            print("verify_trail: --require-signatures needs the 'cryptography' package", file=sys.stderr)
            raise SystemExit(2)
        return None

    def check(public, c):
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(c["signature"]), canonical_checkpoint(c))
            return True
        except (InvalidSignature, ValueError):
            return False

    return check


class Chain:
    """One chain walked record by record."""

    def __init__(self, chain, initial, public, checkpoints, check_signature):
        self.chain = chain
        for c in checkpoints:
            if check_signature and not check_signature(public, c):
                raise Bad(chain, c["seq"], "", f"{c['reason']} checkpoint: bad signature")
        cuts = [c for c in checkpoints if c["reason"] == "cut"]
        cut = max(cuts, key=lambda c: c["seq"]) if cuts else None
        self.seq, self.key, self.mac = 0, initial, bytes(32)
        if cut:
            self.seq, self.mac = cut["seq"], bytes.fromhex(cut["mac"])
            for _ in range(cut["seq"]):
                self.key = hashlib.sha256(self.key).digest()
        self.cut = self.seq
        self.at_seq = {}
        for c in checkpoints:
            if c["seq"] > self.seq:
                self.at_seq.setdefault(c["seq"], []).append(c)
        self.retention = [c for c in checkpoints if c["reason"] == "retention"]
        self.highest = max((c["seq"] for c in checkpoints), default=0)
        self.records = self.removed = 0

    def step(self, r):
        seq, ulid = r["seq"], r["ulid"]

        def bad(what):
            return Bad(self.chain, seq, ulid, what)

        if seq <= self.seq:
            if seq <= self.cut:
                return  # before the cut: not covered by the chain any more
            raise bad(f"duplicate or out-of-order record after seq {self.seq}")
        if seq > self.seq + 1:
            first = self.seq + 1
            what = f"record {first} is missing (deleted)" if seq - 1 == first else f"records {first}..{seq - 1} are missing (deleted)"
            raise Bad(self.chain, first, "", what)
        if ulid_time(ulid) != r["time_ms"]:
            raise bad("time does not match the ULID (changed)")
        body = r.get("body")
        if body is not None:
            if hashlib.sha256(body.encode()).hexdigest() != r["digest"].lower():
                raise bad("body changed (digest mismatch)")
            try:
                event = json.loads(body)
            except ValueError as e:
                raise bad(f"body unreadable: {e}")
            if event.get("code") != r["code"] or (event.get("environment") or "") != r["environment"]:
                raise bad("header does not match the body (code or environment changed)")
        else:
            covered = any(
                c.get("environment") == r["environment"]
                and c.get("before_ms") is not None
                and r["time_ms"] < c["before_ms"]
                and c["seq"] >= seq
                for c in self.retention
            )
            if not covered:
                raise bad("body removed without a retention checkpoint covering it")
            self.removed += 1
        mac = hmac.new(self.key, canonical_record(r) + self.mac, hashlib.sha256).digest()
        if not hmac.compare_digest(mac.hex(), r["mac"].lower()):
            raise bad("MAC mismatch: the record was changed, inserted or reordered")
        for c in self.at_seq.get(seq, []):
            if c["mac"].lower() != r["mac"].lower():
                raise bad(f"{c['reason']} checkpoint at this seq does not match the record")
        self.seq, self.mac = seq, mac
        self.key = hashlib.sha256(self.key).digest()
        self.records += 1

    def finish(self):
        if self.highest > self.seq:
            raise Bad(self.chain, self.seq, "", f"a signed checkpoint covers seq {self.highest} but the trail ends at seq {self.seq} (truncated)")


def verify(lines, keys, check_signature):
    """Walk the dump: per chain, its checkpoints come before its records."""
    chains, checkpoints, order = {}, {}, []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            kind, chain = item["type"], item["chain"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"line {n}: not a record or checkpoint of `sluice audit dump`: {e}")
        if chain not in keys:
            raise Bad(chain, item.get("seq", 0), "", "no initial key for this chain (give the key file with --key-file)")
        if kind == "checkpoint":
            if chain in chains:
                raise ValueError(f"line {n}: a checkpoint of chain {chain} after its records")
            checkpoints.setdefault(chain, []).append(item)
        elif kind == "record":
            if chain not in chains:
                initial, public = keys[chain]
                chains[chain] = Chain(chain, initial, public, checkpoints.get(chain, []), check_signature)
                order.append(chain)
            chains[chain].step(item)
        else:
            raise ValueError(f"line {n}: unknown type {kind!r}")
    for chain, cks in checkpoints.items():
        if chain not in chains:  # checkpoints but no record at all
            initial, public = keys[chain]
            chains[chain] = Chain(chain, initial, public, cks, check_signature)
            order.append(chain)
    for chain in order:
        chains[chain].finish()
    return [chains[c] for c in order]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump", help="output of `sluice audit dump` ('-' for standard input)")
    ap.add_argument("--key-file", required=True, help="the key file: '<chain> <initial key> <public key>' per line")
    ap.add_argument("--require-signatures", action="store_true", help="fail unless checkpoint signatures can be checked")
    args = ap.parse_args()
    try:
        keys = read_keys(args.key_file)
        check_signature = signature_checker(args.require_signatures)
        f = sys.stdin if args.dump == "-" else open(args.dump, encoding="utf-8")
        with f:
            walked = verify(f, keys, check_signature)
    except Bad as e:
        print(f"verify_trail: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"verify_trail: {e}", file=sys.stderr)
        return 2
    print(f"audit trail intact: {len(walked)} chain(s)")
    for c in walked:
        extra = f"; {c.removed} bodies removed by retention" if c.removed else ""
        extra += f"; records up to {c.cut} deleted by retention" if c.cut else ""
        print(f"  chain {c.chain}: seq {c.cut + 1}..{c.seq}, {c.records} records{extra}")
    for chain in keys:
        if chain not in {c.chain for c in walked}:
            print(f"  chain {chain}: no records in the dump")
    if check_signature is None:
        print("  checkpoint signatures NOT checked: install the 'cryptography' package (or pass --require-signatures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
