"""The batch body reader (service/contract/_rows.c `parse`, through TransactionValidator.read_body) reads a
body's bytes straight into the matrix. It must either say "undecided" (None: the route then decodes
the body with orjson and checks it as before) or give exactly the matrix that orjson + the one-pass
reader give: the same shape, the same float64 bits, and only for a valid body; and what they decide
is what jsonschema decides on the body's text."""

from __future__ import annotations

import json
import math
import platform
import re
import struct
from collections.abc import Callable
from decimal import Decimal, localcontext
from fractions import Fraction

import jsonschema
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import synthetic
from service.contract.schema import TransactionValidator, batch_document, load_schema_document
from service.core.features import FEATURE_BOUND, FEATURES, FLOAT32_MAX
from tests.helpers import examples

pytestmark = pytest.mark.native  # the sanitizer run of `make test` repeats these

BATCH_MAX = 50
VALIDATOR = TransactionValidator(batch_document(load_schema_document(), BATCH_MAX))
REFERENCE = jsonschema.Draft202012Validator(VALIDATOR.document)


def read_body(raw: bytes) -> np.ndarray | None:
    """The reader's matrix (its optional strings are test_schema.py's and test_transaction_id.py's)."""
    read = VALIDATOR.read_body(raw)
    return None if read is None else read.matrix


def reference(raw: bytes) -> np.ndarray | None:
    """What the route does without the reader: orjson, then the decoded body's matrix."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return VALIDATOR.matrix(body)


def as_python_reads_it(raw: bytes) -> object:
    """The body as Python's json reads it (integers whole), for jsonschema; None for a body orjson
    refuses (NaN and Infinity are not JSON) or Python cannot read (an integer of 4,300 digits)."""
    try:
        orjson.loads(raw)
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), b.view(np.uint64))


WS = rb"[ \t\n\r]*"
NUMBER = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
MEMBER = WS + rb'"([A-Za-z0-9_]+)"' + WS + b":" + WS + b"(" + NUMBER + b")" + WS
ITEM = WS + rb"\{(?:" + MEMBER + b",)*" + MEMBER + rb"\}" + WS
PLAIN = (
    WS
    + rb"\{"
    + WS
    + rb'"transactions"'
    + WS
    + b":"
    + WS
    + rb"\[(?:"
    + ITEM
    + b",)*"
    + ITEM
    + rb"\]"
    + WS
    + rb"\}"
    + WS
)
READS_DECIMALS = platform.machine() in ("x86_64", "AMD64")  # _rows.c reads integer tokens only elsewhere


def readable(token: bytes) -> bool:
    """A number token the reader promises to read (_rows.c, above `number`): an integer of at most
    2**53 in magnitude, or at most 19 significant digits times 10**q, |q| <= 27."""
    whole, fraction, exponent = re.fullmatch(rb"-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([-+]?[0-9]+))?", token).groups()
    if fraction is None and exponent is None:
        return abs(int(token)) <= 2**53
    digits = (whole + (fraction or b"")).lstrip(b"0")
    q = int(exponent or 0) - len(fraction or b"")
    return not digits or (READS_DECIMALS and len(digits) <= 19 and -27 <= q <= 27)


def must_decide(raw: bytes, expected: np.ndarray | None) -> bool:
    """A body the reader promises to read, in a conservative subset: valid, nothing in the items but
    each feature once with a number it reads, in any order and with any JSON whitespace."""
    if expected is None or not re.fullmatch(PLAIN, raw):
        return False
    members = re.findall(MEMBER, raw)
    names = {name.decode() for name, _ in members}
    return names <= set(FEATURES) and len(members) == expected.size and all(readable(t) for _, t in members)


def check(raw: bytes, read: Callable[[bytes], np.ndarray | None] = read_body) -> np.ndarray | None:
    """The property: the reference's matrix bit for bit, or undecided, and undecided only for a body
    the reader does not promise to read (a reader that never decides fails here); and the route's
    verdict (the reader's, else the reference's) is jsonschema's on the same text."""
    found = read(raw)
    expected = reference(raw)
    if found is None:
        assert not must_decide(raw, expected), f"a plain body left undecided: {raw[:300]!r}"
    else:
        assert expected is not None, raw[:300]
        assert same_bits(found, expected), raw[:300]
    decoded = as_python_reads_it(raw)
    if decoded is not None:
        assert (expected is not None) == REFERENCE.is_valid(decoded), raw[:300]
    return found


def batch(rows: list[list[bytes]], space: bytes = b"") -> bytes:
    items = [
        b"{"
        + (b"," + space).join(
            b'"' + name.encode() + b'":' + space + token for name, token in zip(FEATURES, row, strict=True)
        )
        + b"}"
        for row in rows
    ]
    return b'{"transactions":' + space + b"[" + (b"," + space).join(items) + b"]}"


def test_check_fails_for_a_reader_that_never_decides():
    plain = batch([[b"0.5"] * len(FEATURES), [b"-12"] * len(FEATURES)], b" ")
    with pytest.raises(AssertionError, match="undecided"):
        check(plain, read=lambda raw: None)
    assert check(plain) is not None
    valid = np.ones((1, len(FEATURES)))  # stands in for the reference's matrix of a valid body
    for unpromised in (b'"0.5"', b"1e28", b"12345678901234567890.5", b"9007199254740993", b"[1]"):
        assert not must_decide(batch([[unpromised] * len(FEATURES)]), valid), unpromised


def test_a_thousand_row_body_of_plain_numbers_is_read_exactly():
    X, _ = synthetic.generate(examples(20_000), seed=5)
    for start in range(0, len(X), BATCH_MAX):
        rows = X[start : start + BATCH_MAX]
        raw = (
            b'{"transactions":['
            + b",".join(orjson.dumps(dict(zip(FEATURES, r, strict=True))) for r in rows.tolist())
            + b"]}"
        )
        found = check(raw)
        assert found is not None  # what serialisers write is read here, not left to the slow path
        assert same_bits(found, rows)


# Number tokens: the text of doubles in every form a serialiser writes, the edges of the double
# and float32 ranges, integers around 2**53, and tokens JSON forbids.
EDGE_TOKENS = [
    "0",
    "-0",
    "0.0",
    "-0.0",
    "0e0",
    "-0e-0",
    "0E+5",
    "0.000",
    "1",
    "-1",
    "0.1",
    "-0.1",
    "1e5",
    "1E5",
    "1e+5",
    "1e-5",
    "1.5e-7",
    "123456789012345678",
    "1234567890123456789",
    "12345678901234567890",
    "9007199254740992",
    "9007199254740993",
    "-9007199254740993",
    "9007199254740993.0",
    "9007199254740995.0",
    "9007199254740993.1",
    "9007199254740993e0",
    "18014398509481987e0",
    "1.00000000000000011102230246251565404236316680908203125",
    "0.1000000000000000055511151231257827",
    "0.30000000000000004",
    "2.2250738585072014e-308",
    "5e-324",
    "4.9e-324",
    "2.5e-324",
    "1e-400",
    "1.7976931348623157e308",
    "-1.7976931348623157e308",
    "1e400",
    "-1e400",
    "3.4028234663852886e38",
    "-3.4028234663852886e38",
    "3.4028234663852887e38",
    "3.4028235e38",
    "3.4028236e38",
    *(
        f"{sign}{n}"  # float32's largest and the schema's exact bound as integers, and beside them
        for bound in (int(FLOAT32_MAX), FEATURE_BOUND)
        for n in (bound - 1, bound, bound + 1)
        for sign in ("", "-")
    ),
    "1e27",
    "1e28",
    "1e-27",
    "1e-28",
    "123456789012345678e-27",
    "1234567890123456789e-45",
    "0.01399143357263839",
    "01",
    "-01",
    "00",
    "+1",
    ".5",
    "1.",
    "-",
    "--1",
    "1e",
    "1e+",
    "0x10",
    "1.5.3",
    "NaN",
    "-Infinity",
    "Infinity",
    "true",
    "null",
    '"1"',
    "[1]",
    "{}",
    "1_0",
]


def double_tokens(x: float) -> list[str]:
    return [repr(x), f"{x:.17g}", f"{x:.25g}", f"{x:.15e}", f"{x:.3e}", f"{x:.20f}", str(x).upper()]


@st.composite
def number_tokens(draw):
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(st.sampled_from(EDGE_TOKENS))
    if kind == 1:
        return str(draw(st.integers(-(2**66), 2**66)))
    if kind == 6:  # integers around the float32 bound, on both sides of the schema's exact bound
        return str(draw(st.sampled_from([1, -1])) * draw(st.integers(int(FLOAT32_MAX) - 2**76, FEATURE_BOUND + 2**76)))
    if kind == 2:  # any double's bits
        x = struct.unpack("<d", struct.pack("<Q", draw(st.integers(0, 2**64 - 1))))[0]
        return "1e999" if not math.isfinite(x) else draw(st.sampled_from(double_tokens(x)))
    if kind == 3:  # up to 19 significant digits and an exponent around the reader's range
        digits = draw(st.integers(1, 19))
        mantissa = draw(st.integers(10 ** (digits - 1), 10**digits - 1))
        sign = draw(st.sampled_from(["", "-"]))
        return f"{sign}{mantissa}e{draw(st.integers(-30, 30))}"
    if kind == 4:  # integers with a fraction of zeros: exact halves of doubles above 2**53
        n = draw(st.integers(2**53, 2**63))
        return f"{n}.{'0' * draw(st.integers(1, 3))}"
    x = draw(st.floats(-1e6, 1e6, allow_nan=False))
    return draw(st.sampled_from(double_tokens(x)))


@settings(max_examples=examples(4000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(number_tokens())
def test_every_number_token_is_read_as_orjson_and_the_reader_read_it(token):
    """One token in every feature's place, in a body otherwise plain."""
    for where in (0, 17):
        row = [b"0.5"] * len(FEATURES)
        row[where] = token.encode()
        check(batch([row]))


def test_the_reader_decides_the_plain_edge_tokens():
    """Non-vacuous: the tokens it should read are read, and those it must not are left undecided."""
    decided = {t for t in EDGE_TOKENS if read_body(batch([[t.encode()] * len(FEATURES)])) is not None}
    for t in EDGE_TOKENS:
        check(batch([[t.encode()] * len(FEATURES)]))
    assert {
        "0",
        "-0",
        "-0.0",
        "0.1",
        "1e5",
        "9007199254740992",
        "9007199254740993.0",
        "3.4028234663852886e38",
    } <= decided
    assert not decided & {"9007199254740993", "1e400", "3.4028236e38", "01", "+1", ".5", "1.", "NaN", '"1"', "true"}
    assert read_body(batch([[b"-0"] * len(FEATURES)]))[0, 0].hex() == "0x0.0p+0"  # orjson's int 0
    assert math.copysign(1, read_body(batch([[b"-0.0"] * len(FEATURES)]))[0, 0]) == -1
    assert read_body(batch([[b"9007199254740993.0"] * len(FEATURES)]))[0, 0] == 2**53  # the tie, to even
    assert read_body(batch([[b"9007199254740995.0"] * len(FEATURES)]))[0, 0] == 2**53 + 4
    assert read_body(batch([[b"9007199254740993.1"] * len(FEATURES)]))[0, 0] == 2**53 + 2


# Values as data sets hold them (number_tokens covers the rest, 1 value in 100 here).
TYPICAL = st.floats(-1e6, 1e6).map(lambda x: x if abs(x) > 1e-12 else 0.0)
WHITESPACE = st.sampled_from([b"", b"", b"", b" ", b"\n", b"\t", b"\r\n", b"  \t"])
NOT_WHITESPACE = st.sampled_from([b"\x0c", b"\x0b", b"\xc2\xa0", b"\x00", b"\xef\xbb\xbf"])
SIMPLE_VALUES = [
    b'"x"',
    b'""',
    b'"a b"',
    b"1",
    b"-2.5e3",
    b"true",
    b"false",
    b"null",
    b"1e999",
    b'"\\n"',
    b'"\xc3\xa9"',
    b"[]",
    b"{}",
    b'{"a":1}',
    b"tru",
    b"nul",
]
EXTRA_KEYS = [b"note", b"id", b"transactions", b"v1", b"V29", b"V1 ", b"", b"\\u0056", b"\xc3\xa9"]


@st.composite
def bodies(draw):
    """Mostly valid batches, written with varied whitespace, extra keys, reordered or repeated
    keys, then now and then cut short or with one byte changed."""
    space = lambda: draw(WHITESPACE)  # noqa: E731
    items = []
    for _ in range(draw(st.integers(1, 4)) if draw(st.integers(0, 9)) else 0):
        pairs = [
            (
                name.encode(),
                draw(number_tokens()) if draw(st.integers(0, 99)) == 0 else repr(draw(TYPICAL)).encode(),
            )
            for name in FEATURES
        ]
        if draw(st.booleans()):
            pairs = draw(st.permutations(pairs))
        for _ in range(draw(st.integers(0, 2))):
            pairs.insert(
                draw(st.integers(0, len(pairs))),
                (draw(st.sampled_from(EXTRA_KEYS)), draw(st.sampled_from(SIMPLE_VALUES))),
            )
        if draw(st.integers(0, 5)) == 0:
            pairs.insert(draw(st.integers(0, len(pairs))), draw(st.sampled_from(pairs)))  # a repeated key
        if draw(st.integers(0, 5)) == 0:
            del pairs[draw(st.integers(0, len(pairs) - 1))]
        members = [
            space() + b'"' + k + b'"' + space() + b":" + space() + (v if isinstance(v, bytes) else v.encode()) + space()
            for k, v in pairs
        ]
        items.append(space() + b"{" + b",".join(members) + b"}" + space())
    top = [space() + b'"transactions"' + space() + b":" + space() + b"[" + b",".join(items) + b"]" + space()]
    if draw(st.integers(0, 7)) == 0:
        top.insert(draw(st.integers(0, 1)), b'"other":1')
    raw = space() + b"{" + b",".join(top) + b"}" + space()
    mutation = draw(st.integers(0, 11))
    if mutation == 0 and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif mutation == 1 and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1 :]
    elif mutation == 2:
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + draw(NOT_WHITESPACE) + raw[i:]
    return raw


@settings(
    max_examples=examples(1000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(bodies())
def test_every_body_is_read_as_orjson_and_the_reader_read_it(raw):
    check(raw)


def test_bodies_the_reader_leaves_to_the_slow_path():
    row = [b"0.5"] * len(FEATURES)
    plain = batch([row])
    assert read_body(plain) is not None and read_body(b" \n" + batch([row, row], b" \t\r\n") + b"\n") is not None
    undecided = [
        plain[:-1],  # cut short
        plain + b"x",
        b'{"transactions":[]}',  # too few items: the slow path's 422
        batch([row] * (BATCH_MAX + 1)),  # too many: its 413
        plain.replace(b'"V3":0.5', b'"V3":0.5,"V3":0.5'),  # a repeated key
        plain.replace(b'"V3":0.5,', b""),  # a missing key
        plain.replace(b'"V3":0.5', b'"V3":"0.5"'),
        plain.replace(b'"V3"', b'"V\\u0033"'),  # an escaped key
        plain.replace(b'"V3":0.5', b'"V3":0.5,"extra":[1]'),  # a container in an extra key
        plain.replace(b'"V3":0.5', b'"V3":0.5,"extra":1e999'),  # an extra number orjson refuses
        plain.replace(b"{", b'{"x":1,', 1),  # another top-level key
        b"[" + plain + b"]",
    ]
    for raw in undecided:
        assert check(raw) is None, raw[:200]
    extra = plain.replace(b'"V3":0.5', b'"V3":0.5,"note":"ok","n":-1.5e3,"t":true,"f":false,"z":null')
    assert same_bits(check(extra), check(plain))


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_cut_body_is_never_read(cut):
    raw = batch([[b"1.25"] * len(FEATURES)] * 3)
    for end in range(len(raw) - cut, 0, -7):
        assert read_body(raw[:end]) is None


def rounded_to_64_bits(x: Fraction) -> Fraction:
    """x rounded to a 64-bit significand, to nearest, ties to even (what the x87 unit gives)."""
    shift = x.numerator.bit_length() - x.denominator.bit_length() - 64
    while x / Fraction(2) ** shift >= 2**64:
        shift += 1
    while x / Fraction(2) ** shift < 2**63:
        shift -= 1
    return round(x / Fraction(2) ** shift) * Fraction(2) ** shift


def test_tokens_whose_extended_quotient_is_a_double_midpoint_are_rounded_exactly():
    """The reader's rare case: m / 10**k in extended precision lands exactly halfway between two
    doubles (the exact value may be just above, just below, or on it). Written near midpoints, so
    that many land there; each is checked against Python's correctly rounded float() and orjson."""
    rng = np.random.default_rng(9)
    landed = 0
    with localcontext() as context:
        context.prec = 60
        for d in np.concatenate(
            [
                rng.uniform(1e-9, 1, examples(3000)),
                rng.uniform(1, 1e9, examples(3000)),
                rng.uniform(1e18, 1e26, examples(3000)),
            ]
        ).tolist():
            midpoint = Fraction(d) + Fraction(math.ulp(d)) / 2
            near = Decimal(midpoint.numerator) / Decimal(midpoint.denominator)
            for digits in (17, 18, 19):
                token = f"{near:.{digits - 1}e}"
                if rounded_to_64_bits(Fraction(Decimal(token))) != midpoint:
                    continue
                landed += 1
                found = check(batch([[token.encode()] * len(FEATURES)]))
                assert found is not None and found[0, 0] == float(token), token
    assert landed > 100
