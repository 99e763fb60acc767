#!/usr/bin/env python3
"""Generate Sluice's masking quality corpus: a CSV plus its ground truth.

    python3 tests/masking/generate.py --out DIR [--rows 10000] [--seed 42]

writes DIR/corpus.csv (header + rows) and DIR/truth.json. Output is
deterministic for a given seed and Faker version (pinned in
tests/clients/python/requirements.txt).

Columns come in four groups:

* value columns with neutral names (c01_…): every value is one sensitive
  item of a known kind; only value detectors can find them;
* embedded columns (notes, payload): prose or JSON with one sensitive item
  per row at a known kind (per-row truth in truth.json "embedded");
* named PII columns (customer_email, nachname, geburtsdatum, …): for the
  column-name classifier, in several languages;
* non-PII columns (ids, SKUs, timestamps, UUIDs, digests, prices, versions,
  prose, URLs, paths, user agents, barcodes, …): any finding is a false
  positive. Some have PII-looking names (email_verified, phone_count, …).

truth.json:
  {"seed", "rows", "faker_version", "locales",
   "columns": [{"name", "kind" (or null), "pii", "by": "values" | "name" |
                "embedded" | null, "pg_type"}],
   "embedded": {"notes": [[kind, ...], ...], ...}}

Credentials (cloud keys, tokens, PEM keys, password hashes) are synthetic:
the right formats with random bodies; none is real.
"""

import argparse
import base64
import datetime
import csv
import hashlib
import json
import os
import random
import string
import sys
import uuid

try:
    import faker
    from faker import Faker
except ImportError:  # pragma: no cover - reported to the caller
    sys.stderr.write(
        "generate.py: the Python module 'faker' is missing; "
        "run scripts/install-test-deps.sh (it installs "
        "tests/clients/python/requirements.txt)\n"
    )
    sys.exit(3)

T_START = datetime.datetime(2005, 1, 1)
T_END = datetime.datetime(2026, 1, 1)
DOB_START = datetime.date(1930, 1, 1)
DOB_END = datetime.date(2007, 12, 31)

LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "nl_NL", "it_IT"]

B62 = string.ascii_letters + string.digits
B64 = B62 + "+/"
B64URL = B62 + "-_"
CRYPT64 = "./" + string.digits + string.ascii_uppercase + string.ascii_lowercase


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)
        # some Faker providers (es_ES nif/nie) draw from the global generator
        random.seed(seed)
        self.fakers = {}
        for i, loc in enumerate(LOCALES):
            f = Faker(loc)
            f.seed_instance(seed * 100 + i)
            self.fakers[loc] = f

    # -- helpers ---------------------------------------------------------
    def fk(self, locales=LOCALES):
        return self.fakers[self.r.choice(locales)]

    def rand(self, alphabet, n):
        return "".join(self.r.choices(alphabet, k=n))

    def b64(self, nbytes, urlsafe=False, pad=True):
        raw = bytes(self.r.getrandbits(8) for _ in range(nbytes))
        s = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
        return s if pad else s.rstrip("=")

    # -- sensitive values -------------------------------------------------
    def email(self):
        f = self.fk()
        return self.r.choice([f.email, f.free_email, f.company_email, f.safe_email])()

    def phone(self):
        return self.fk().phone_number()

    def ssn(self):
        return self.fakers["en_US"].ssn()

    def card(self):
        r = self.r
        kind = r.choices(
            ["visa16", "visa19", "mastercard", "amex", "discover", "diners", "jcb", "unionpay", "maestro"],
            weights=[30, 3, 25, 10, 8, 5, 6, 8, 5],
        )[0]
        f = self.fakers["en_US"]
        if kind in ("visa16", "visa19", "mastercard", "amex", "discover", "diners"):
            n = f.credit_card_number(card_type=kind)
        else:
            prefix, length = {
                "jcb": (str(r.randint(3528, 3589)), 16),
                "unionpay": ("62" + str(r.randint(10, 99)), r.choice([16, 19])),
                "maestro": (r.choice(["5018", "5020", "5038", "6304", "6759", "6761"]), r.choice([16, 19])),
            }[kind]
            n = luhn_complete(prefix + self.rand(string.digits, length - len(prefix) - 1))
        style = r.random()
        if style < 0.5:
            return n
        sep = " " if style < 0.8 else "-"
        if len(n) == 15:
            return sep.join([n[:4], n[4:10], n[10:]])
        return sep.join(n[i : i + 4] for i in range(0, len(n), 4))

    def iban(self):
        v = self.fk().iban()
        if self.r.random() < 0.3:
            v = " ".join(v[i : i + 4] for i in range(0, len(v), 4))
        return v

    def ipv4(self):
        r = self.r
        return f"{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def ip(self):
        return self.ipv4() if self.r.random() < 0.7 else self.fk().ipv6()

    def jwt(self):
        f = self.fk()
        header = {"alg": self.r.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
        payload = {
            "sub": str(self.r.randint(1, 10**9)),
            "name": f.name(),
            "email": f.email(),
            "iat": self.r.randint(1_500_000_000, 1_800_000_000),
        }
        enc = lambda o: base64.urlsafe_b64encode(json.dumps(o).encode()).decode().rstrip("=")
        return f"{enc(header)}.{enc(payload)}.{self.b64(32, urlsafe=True, pad=False)}"

    def aws_id(self):
        return self.r.choice(["AKIA", "ASIA"]) + self.rand(string.ascii_uppercase + "234567", 16)

    def aws_secret(self):
        key = self.rand(B64, 40)
        return self.r.choice(
            [
                f"aws_secret_access_key={key}",
                f"aws_secret_access_key = {key}",
                f"AWS_SECRET_ACCESS_KEY={key}",
                f'"SecretAccessKey": "{key}"',
            ]
        )

    def gcp_key(self):
        return "AIza" + self.rand(B64URL, 35)

    def azure(self):
        acct = self.fk().user_name().replace(".", "").replace("_", "")[:20] or "acct"
        if self.r.random() < 0.6:
            return (
                f"DefaultEndpointsProtocol=https;AccountName={acct};"
                f"AccountKey={self.b64(64)};EndpointSuffix=core.windows.net"
            )
        sig = self.b64(32).replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
        return (
            f"https://{acct}.blob.core.windows.net/data/file.csv?"
            f"sv=2022-11-02&ss=b&srt=o&sp=r&se=2030-01-01T00:00:00Z&sig={sig}"
        )

    def github(self):
        if self.r.random() < 0.8:
            return self.r.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + self.rand(B62, 36)
        return "github_pat_" + self.rand(B62, 22) + "_" + self.rand(B62, 59)

    def slack(self):
        if self.r.random() < 0.7:
            return (
                self.r.choice(["xoxb", "xoxp", "xoxa", "xoxr"])
                + f"-{self.rand(string.digits, 12)}-{self.rand(string.digits, 13)}-{self.rand(B62, 24)}"
            )
        return (
            "https://hooks.slack.com/services/"
            f"T{self.rand(string.ascii_uppercase + string.digits, 8)}/"
            f"B{self.rand(string.ascii_uppercase + string.digits, 10)}/{self.rand(B62, 24)}"
        )

    def stripe(self):
        return self.r.choice(["sk_live_", "rk_live_", "sk_test_"]) + self.rand(B62, self.r.choice([24, 34, 99]))

    def pem(self):
        label = self.r.choice(["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
        body = self.b64(self.r.choices([121, 256, 1190], weights=[6, 3, 1])[0])
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"

    def password_hash(self):
        r = self.r
        kind = r.randrange(7)
        if kind == 0:
            return f"$2{r.choice('aby')}${r.randint(10, 13):02d}${self.rand(CRYPT64, 53)}"
        if kind == 1:
            return (
                f"$argon2id$v=19$m={r.choice([19456, 65536])},t={r.randint(2, 4)},p={r.randint(1, 4)}$"
                f"{self.b64(16, pad=False)}${self.b64(32, pad=False)}"
            )
        if kind == 2:
            return f"$6$rounds=5000${self.rand(CRYPT64, 16)}${self.rand(CRYPT64, 86)}"
        if kind == 3:
            return f"$5${self.rand(CRYPT64, 16)}${self.rand(CRYPT64, 43)}"
        if kind == 4:
            return f"SCRAM-SHA-256$4096:{self.b64(16)}${self.b64(32)}:{self.b64(32)}"
        if kind == 5:
            return "md5" + hashlib.md5(self.rand(B62, 12).encode()).hexdigest()
        return f"pbkdf2_sha256$870000${self.rand(B62, 22)}${self.b64(32)}"

    def secret(self):
        return self.rand(B62, self.r.randint(32, 48))

    def national_id(self):
        loc = self.r.choice(["it_IT", "es_ES", "fr_FR"])
        f = self.fakers[loc]
        if loc == "it_IT":
            return f.ssn()
        if loc == "es_ES":
            return self.r.choice([f.nif, f.nie])()
        return f.ssn()

    # -- non-PII values ---------------------------------------------------
    def sentence(self):
        return self.fk().sentence(nb_words=self.r.randint(6, 16))

    def sku(self):
        r = self.r
        return r.choice(
            [
                f"SKU-{r.randint(1000, 9999)}-{r.choice(['XS', 'S', 'M', 'L', 'XL', 'XXL'])}",
                f"PRD-{r.randint(2015, 2025)}-{self.rand(string.ascii_uppercase, 4)}-{r.randint(1000, 9999)}",
                f"{self.rand(string.ascii_uppercase, 3)}{r.randint(100000, 999999)}",
                f"ITEM_{r.randint(1, 99999):05d}",
            ]
        )

    def timestamp(self):
        f = self.fk()
        # fixed bounds: relative ones ("-20y") would make the output depend on today
        dt = f.date_time_between(start_date=T_START, end_date=T_END)
        return self.r.choice(
            [
                dt.isoformat(),
                dt.isoformat(sep=" "),
                dt.strftime("%Y-%m-%d %H:%M:%S.%f+00"),
                dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                dt.strftime("%d.%m.%Y %H:%M"),
                dt.strftime("%m/%d/%Y %I:%M %p"),
                str(int(dt.timestamp())),
                str(int(dt.timestamp() * 1000)),
                dt.strftime("%Y%m%d%H%M%S"),
            ]
        )

    def iso_timestamp(self):
        # a value PostgreSQL's timestamptz input reads as it is
        f = self.fk()
        return f.date_time_between(start_date=T_START, end_date=T_END).isoformat() + "+00:00"

    def ulid(self):
        return self.rand("0123456789ABCDEFGHJKMNPQRSTVWXYZ", 26)

    def version(self):
        r = self.r
        v = f"{r.randint(0, 20)}.{r.randint(0, 30)}.{r.randint(0, 200)}"
        return r.choice([v, "v" + v, v + f"-rc.{r.randint(1, 9)}", v + f"+build.{r.randint(1, 9999)}"])

    def price(self):
        r = self.r
        amount = r.randint(0, 500000) / 100
        return r.choice([f"{amount:.2f}", f"{amount:,.2f} EUR", f"${amount:,.2f}", f"{amount:.2f} USD"])

    def json_doc(self):
        r = self.r
        return json.dumps(
            {
                "id": r.randint(1, 10**7),
                "sku": self.sku(),
                "qty": r.randint(1, 20),
                "price": r.randint(100, 99999) / 100,
                "created_at": self.timestamp(),
                "status": r.choice(["new", "paid", "shipped", "returned"]),
                "tags": r.sample(["red", "blue", "sale", "gift", "eco"], 2),
                "token_count": r.randint(0, 4000),
                "email_verified": r.random() < 0.5,
            }
        )

    def base64_text(self):
        return base64.b64encode(self.sentence().encode()).decode()


def dob(f):
    """A date of birth between fixed bounds (Faker's own is relative to today)."""
    return f.date_between(start_date=DOB_START, end_date=DOB_END)


def luhn_complete(partial):
    """Append the Luhn check digit."""
    total = 0
    for i, d in enumerate(reversed(partial)):
        v = int(d)
        if i % 2 == 0:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return partial + str((10 - total % 10) % 10)


def embedded_note(g):
    """Prose with one sensitive item; returns (text, kind)."""
    r = g.r
    kind, value = r.choice(
        [
            ("email", g.email),
            ("phone", lambda: g.fakers["en_US"].numerify("(###) 555-####").replace("(0", "(2").replace("(1", "(3")),
            ("card", g.card),
            ("ssn", g.ssn),
            ("iban", g.iban),
            ("ip_address", g.ipv4),
            ("aws_key", g.aws_id),
            ("github_token", g.github),
            ("jwt", g.jwt),
        ]
    )
    v = value()
    a, b = g.sentence(), g.sentence()
    template = r.choice(["{a} {v} {b}", "{a} ({v}). {b}", "{a}: {v}", "{v} - {b}", "{a} <{v}>, {b}"])
    return template.format(a=a.rstrip("."), b=b, v=v), kind


def embedded_payload(g):
    """A JSON document with one sensitive field; returns (text, kind)."""
    r = g.r
    kind, value = r.choice(
        [
            ("email", g.email),
            ("card", g.card),
            ("iban", g.iban),
            ("ssn", g.ssn),
            ("password", lambda: g.rand(B62 + "!#%&*", r.randint(8, 16))),
            ("aws_key", g.aws_id),
            ("private_key", g.pem),
        ]
    )
    key = {"password": "password", "private_key": "private_key"}.get(kind, r.choice(["value", "contact", "ref", "data"]))
    doc = {"id": r.randint(1, 10**6), "type": r.choice(["a", "b"]), key: value(), "note": g.sentence()}
    return json.dumps(doc), kind


def columns(g):
    """(name, kind, pii, by, pg_type, generator) for every column."""
    f_us, f_de, f_fr, f_it, f_es, f_nl = (g.fakers[l] for l in ["en_US", "de_DE", "fr_FR", "it_IT", "es_ES", "nl_NL"])
    r = g.r
    V = "values"
    N = "name"
    return [
        # value columns, neutral names
        ("c01", "email", True, V, "text", g.email),
        ("c02", "phone", True, V, "text", g.phone),
        ("c03", "ssn", True, V, "text", g.ssn),
        ("c04", "card", True, V, "text", g.card),
        ("c05", "iban", True, V, "text", g.iban),
        ("c06", "ip_address", True, V, "text", g.ip),
        ("c07", "jwt", True, V, "text", g.jwt),
        ("c08", "aws_key", True, V, "text", g.aws_id),
        ("c09", "aws_key", True, V, "text", g.aws_secret),
        ("c10", "gcp_key", True, V, "text", g.gcp_key),
        ("c11", "azure_key", True, V, "text", g.azure),
        ("c12", "github_token", True, V, "text", g.github),
        ("c13", "slack_token", True, V, "text", g.slack),
        ("c14", "stripe_key", True, V, "text", g.stripe),
        ("c15", "private_key", True, V, "text", g.pem),
        ("c16", "password_hash", True, V, "text", g.password_hash),
        ("c17", "secret", True, V, "text", g.secret),
        ("c18", "national_id", True, V, "text", g.national_id),
        # embedded
        ("notes", None, True, "embedded", "text", None),
        ("payload", None, True, "embedded", "jsonb", None),
        # named PII, several languages
        ("customer_email", "email", True, N, "text", g.email),
        ("emailAddress", "email", True, N, "text", g.email),
        ("Telefonnummer", "phone", True, N, "text", f_de.phone_number),
        ("mobile", "phone", True, N, "text", g.phone),
        ("social_security_number", "ssn", True, N, "text", g.ssn),
        ("billing_card_number", "card", True, N, "text", g.card),
        ("cc_num", "card", True, N, "text", g.card),
        ("iban", "iban", True, N, "text", g.iban),
        ("first_name", "name", True, N, "text", lambda: g.fk().first_name()),
        ("LastName", "name", True, N, "text", lambda: g.fk().last_name()),
        ("full_name", "name", True, N, "text", lambda: g.fk().name()),
        ("vorname", "name", True, N, "text", f_de.first_name),
        ("nachname", "name", True, N, "text", f_de.last_name),
        ("prenom", "name", True, N, "text", f_fr.first_name),
        ("cognome", "name", True, N, "text", f_it.last_name),
        ("apellidos", "name", True, N, "text", f_es.last_name),
        ("achternaam", "name", True, N, "text", f_nl.last_name),
        ("date_of_birth", "date_of_birth", True, N, "date", lambda: dob(f_us).isoformat()),
        ("geburtsdatum", "date_of_birth", True, N, "date", lambda: dob(f_de).isoformat()),
        ("fecha_de_nacimiento", "date_of_birth", True, N, "text", lambda: dob(f_es).strftime("%d/%m/%Y")),
        ("address_line1", "address", True, N, "text", lambda: g.fk().street_address()),
        ("direccion", "address", True, N, "text", f_es.street_address),
        ("strasse", "address", True, N, "text", f_de.street_name),
        ("zip_code", "postal_code", True, N, "text", lambda: g.fk().postcode()),
        ("password", "password", True, N, "text", lambda: g.rand(B62 + "!#%&*", r.randint(8, 16))),
        ("api_key", "api_key", True, N, "text", lambda: g.rand(B62, 32)),
        ("codice_fiscale", "national_id", True, N, "text", f_it.ssn),
        ("client_ip", "ip_address", True, N, "inet", g.ipv4),
        # non-PII, including PII-looking names
        ("id", None, False, None, "int8", lambda: str(r.randint(1, 10**9))),
        ("order_id", None, False, None, "int8", lambda: str(r.randint(10**9, 10**12))),
        ("sku", None, False, None, "text", g.sku),
        ("created_at", None, False, None, "text", g.timestamp),
        ("event_time", None, False, None, "text", g.timestamp),
        ("request_id", None, False, None, "uuid", lambda: str(uuid.UUID(int=r.getrandbits(128), version=4))),
        ("content_sha256", None, False, None, "text", lambda: hashlib.sha256(g.sentence().encode()).hexdigest()),
        ("etag", None, False, None, "text", lambda: hashlib.md5(g.sentence().encode()).hexdigest()),
        ("commit", None, False, None, "text", lambda: hashlib.sha1(g.sentence().encode()).hexdigest()),
        ("price", None, False, None, "text", g.price),
        ("version", None, False, None, "text", g.version),
        ("description", None, False, None, "text", g.sentence),
        ("long_text", None, False, None, "text", lambda: g.fk().paragraph(nb_sentences=2)),
        ("ulid", None, False, None, "text", g.ulid),
        ("url", None, False, None, "text", lambda: g.fk().url() + g.fk().uri_path() + "?page=" + str(r.randint(1, 99))),
        ("file_path", None, False, None, "text", lambda: g.fk().file_path(depth=r.randint(1, 4))),
        ("user_agent", None, False, None, "text", lambda: f_us.user_agent()),
        ("barcode", None, False, None, "text", lambda: r.choice([f_us.ean13, f_us.ean8, f_us.isbn13])()),
        ("company", None, False, None, "text", lambda: g.fk().company()),
        ("job", None, False, None, "text", lambda: g.fk().job()),
        ("city", None, False, None, "text", lambda: g.fk().city()),
        ("country_code", None, False, None, "text", lambda: g.fk().country_code()),
        ("color", None, False, None, "text", lambda: g.fk().color_name()),
        ("quantity", None, False, None, "int4", lambda: str(r.randint(-50, 5000))),
        ("ratio", None, False, None, "float8", lambda: repr(r.uniform(-1000, 1000))),
        ("coordinates", None, False, None, "text", lambda: f"{f_us.latitude()}, {f_us.longitude()}"),
        ("swift_bic", None, False, None, "text", lambda: g.fk().swift(length=r.choice([8, 11]))),
        ("mac", None, False, None, "text", f_us.mac_address),
        ("hostname", None, False, None, "text", lambda: g.fk().hostname()),
        ("order_json", None, False, None, "jsonb", g.json_doc),
        ("encoded_text", None, False, None, "text", g.base64_text),
        ("email_verified", None, False, None, "bool", lambda: r.choice(["true", "false"])),
        ("phone_count", None, False, None, "int4", lambda: str(r.randint(0, 5))),
        ("password_changed_at", None, False, None, "timestamptz", g.iso_timestamp),
        ("token_count", None, False, None, "int4", lambda: str(r.randint(0, 100000))),
        ("key_id", None, False, None, "text", lambda: f"key-{r.randint(1, 9999)}"),
        ("card_brand", None, False, None, "text", lambda: r.choice(["visa", "mastercard", "amex"])),
        ("product_name", None, False, None, "text", lambda: g.fk().catch_phrase()),
    ]


def main():
    # Faker iterates some sets of strings; their order depends on the hash
    # seed, so fix it (re-executing once) to make the output reproducible.
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for corpus.csv and truth.json")
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    g = Gen(args.seed)
    cols = columns(g)
    embedded = {"notes": [], "payload": []}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "corpus.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([c[0] for c in cols])
        for _ in range(args.rows):
            row = []
            for name, kind, pii, by, pg_type, gen in cols:
                if name == "notes":
                    text, k = embedded_note(g)
                    embedded["notes"].append([k])
                    row.append(text)
                elif name == "payload":
                    text, k = embedded_payload(g)
                    embedded["payload"].append([k])
                    row.append(text)
                else:
                    row.append(gen())
            w.writerow(row)
    truth = {
        "seed": args.seed,
        "rows": args.rows,
        "faker_version": faker.VERSION,
        "locales": LOCALES,
        "columns": [
            {"name": n, "kind": k, "pii": p, "by": b, "pg_type": t} for n, k, p, b, t, _ in cols
        ],
        "embedded": embedded,
    }
    with open(os.path.join(args.out, "truth.json"), "w", encoding="utf-8") as fh:
        json.dump(truth, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
