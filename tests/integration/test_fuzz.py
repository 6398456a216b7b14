"""Hostile bodies at the score endpoints of a real server: never a 5xx, always JSON, nothing logged
as a crash.

Two models are served: ``plain`` has no dense features, so its bodies go through the compiled
scanner first (``scoring.engine.jsonscan``) and fall back to msgspec; ``ctr`` has dense features,
so its bodies go through msgspec and the feature layout. Each gets hand-written edge cases (the
numbers, bytes and shapes found to break parsers) and byte-level mutations of valid bodies of
every size (a flipped or inserted byte, a truncation, a spliced or duplicated token, an extreme
number or a broken string put in place of a value), sent as raw bytes over HTTP. Generation is
seeded, so a failure names a body that reproduces.
"""

from __future__ import annotations

import json
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .server import Server, install_model

MAX_VALUES = 10
PATHS = {"plain": "/v1/models/plain/score", "ctr": "/v1/models/ctr/score",
         "plain-explain": "/v1/models/plain/explain", "ctr-explain": "/v1/models/ctr/explain"}
MODELS = list(PATHS)

# numbers, strings and shapes that have broken JSON decoders somewhere
EXTREME_NUMBERS = [b"1e400", b"-1e400", b"1e-400", b"-0", b"-0.0", b"18446744073709551616",
                   b"18446744073709551615", b"-9223372036854775809", b"9" * 400, b"1" * 5000,
                   b"3.4028235e38", b"-3.4028236e38", b"1.7976931348623157e308", b"1E+2", b"0.1e",
                   b"01", b"-", b"NaN", b"Infinity", b"-Infinity", b"1.5", b"2e19", b"0x10"]
BROKEN_STRINGS = [b'"\xff\xfe"', b'"\xc3"', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b'"\xc0\xaf"',
                  b'"\\ud800"', b'"\\udc00\\ud800"', b'"\\u0000"', b'"\\x41"', b'"\\u12"', b'"a\x00b"',
                  b'"\x1f"', b'"\\"', b'"' + b"a" * 70000 + b'"', b'"\xe2\x82"', b'"\\uDBFF\\uDFFF"']
INTERESTING_BYTES = b'\xff\x80\xc3\xed\x00\x1f"\\{}[],:0-e. \tnlt'


def valid_body(rng: random.Random, n_ads: int, dense: bool) -> bytes:
    def value():
        k = rng.choice([0, 1, 1, 2, 5])
        vals = [rng.choice([f"v{rng.randrange(500)}", rng.randrange(2**64), "火锅", "x y"])
                for _ in range(k)]
        return vals[0] if k == 1 and rng.random() < 0.5 else vals

    ads = []
    for i in range(n_ads):
        ad: dict = {"id": f"a{i}", "features": {"ad_id": value(), "category": value()}}
        if dense:
            ad["dense"] = [rng.uniform(-3, 3), rng.uniform(-3, 3)]
        ads.append(ad)
    doc = {"request_id": f"r-{rng.randrange(10**6)}",
           "context": {"user_id": value(), "city": value()}, "ads": ads}
    return json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null|[{}\[\],:]')


def mutate(body: bytes, rng: random.Random) -> bytes:
    b = bytearray(body)
    kind = rng.randrange(9)
    pos = rng.randrange(len(b) + 1)
    if kind == 0 and b:  # flip bits of one byte
        b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
    elif kind == 1:  # insert an interesting byte
        b[pos:pos] = bytes([rng.choice(INTERESTING_BYTES)])
    elif kind == 2 and b:  # delete a byte
        del b[min(pos, len(b) - 1)]
    elif kind == 3:  # truncate
        del b[pos:]
    elif kind in (4, 5, 6):  # replace a token: by another token, an extreme number or a bad string
        tokens = list(_TOKEN.finditer(body))
        if tokens:
            t = rng.choice(tokens)
            new = (rng.choice(tokens).group() if kind == 4 else rng.choice(EXTREME_NUMBERS)
                   if kind == 5 else rng.choice(BROKEN_STRINGS))
            b[t.start():t.end()] = new
    elif kind == 7:  # splice: copy a slice somewhere else
        i = rng.randrange(len(b) + 1)
        j = min(len(b), i + rng.randrange(1, 40))
        b[pos:pos] = b[i:j]
    else:  # wrap a value in deep nesting
        depth = rng.choice([1, 64, 200, 5000])
        b[pos:pos] = b"[" * depth + b"1" + b"]" * depth
    return bytes(b)


HAND_WRITTEN = [
    b'{"ads":[],"context":{"user_id":1e400}}', b'{"ads":[{"features":{"ad_id":-1e400}}]}',
    b'{"ads":[{"features":{"ad_id":"\xff\xfe"}}]}', b'{"ads":[{"features":{"ad\xff_id":"x"}}]}',
    b'{"ads":[],"request_id":"\xff"}', b'{"ads":[],"request_id":123456789012345678901234567890}',
    b'{"ads":[],"request_id":1e400}', b'{"ads":[],"request_id":-9223372036854775809}',
    b'{"ads":[{"features":{"ad_id":' + b"[" * 5000 + b"]" * 5000 + b"}}]}", b"[" * 100000,
    b'{"ads":' + b"[" * 100000, b'{"ads":[],"context":{"user_id":"\\ud800"}}',
    b'{"ads":[{"dense":[1e400,1]}]}', b'{"ads":[{"dense":[3.4e38,3.4e38]}]}',
    b'{"ads":[{"dense":[-3.4e38,3.4e38]}]}', b'{"ads":[{"dense":[1e-400,-0.0]}]}',
    b'{"ads":[{"dense":[NaN,1]}]}', b'{"ads":[{"dense":[Infinity,1]}]}',
    b'{"ads":[{"dense":[1,2],"features":{"ad_id":18446744073709551616}}]}',
    b'\xef\xbb\xbf{"ads":[]}', b'{"ads":[]}\x00', b'{"ads":[]} {"ads":[]}', b"", b" ", b"null",
    b'{"ads":[],"ads":[{}]}', b'{"ads":[{"features":{"ad_id":"a","ad_id":"b"}}]}',
    b'{"\\u0061ds":[]}', b'{"ads":[{"features":{"ad_id":"a\\u0000b"}}]}',
    b'{"ads":[{"id":1e400}]}', b'{"ads":[{"id":{"x":[1]}}]}', b'{"ads":[{"features":null,"dense":null}]}',
    b'{"context":{"user_id":[' + b'"u",' * 5000 + b'"u"]},"ads":[]}',
    b'{"ads":[' + b"{}," * 3000 + b"{}]}", b'{"ads":[{"features":{"ad_id":[]}}]}',
    b'{"ads":[{"features":{"":"x"}}]}', b'{"ads":[{"features":{"ad_id":true}}]}',
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    install_model(root / "repo", "v1", seed=1, dense_dim=2)
    install_model(root / "repo", "p1", seed=2, name="plain")
    server = Server(root / "repo", root / "server.log",
                    args=["--max-values-per-group", str(MAX_VALUES), "--max-ads", "2000",
                          "--default-model", "ctr"])
    try:
        yield server.wait()
    finally:
        server.stop()


def _check(server: Server, path: str, content: bytes) -> int:
    from .server import ADMIN_TOKEN

    r = server.client.post(path, content=content, headers={
        "content-type": "application/json", "authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code < 500, (content[:300], r.text, server.log())
    body = r.json()
    if r.status_code == 200 and path.endswith("/explain"):
        assert isinstance(body["ads"], list) and body["version"] in ("v1", "p1")
        for ad in body["ads"]:
            assert 0.0 <= ad["pctr"] <= 1.0 and isinstance(ad["logit"], float), ad
            total = sum(g["contribution"] for g in ad["groups"].values()) + ad["remainder"]
            assert abs(total - ad["logit"]) <= 1e-5 * max(1.0, abs(ad["logit"])), ad
    elif r.status_code == 200:
        assert isinstance(body["scores"], list) and body["version"] in ("v1", "p1")
        assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in body["scores"]), body
    else:
        assert r.status_code in (400, 413, 422), (r.status_code, body)
        assert isinstance(body["error"], str) and body["error"], body
    return r.status_code


def _no_crash_logged(server: Server) -> None:
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "unexpected error" not in log, log[-4000:]


@pytest.mark.parametrize("model", MODELS)
def test_hand_written_edge_cases(fuzz_server, model):
    statuses = [_check(fuzz_server, PATHS[model], body) for body in HAND_WRITTEN]
    assert statuses.count(400) >= 5 and statuses.count(422) >= 5, statuses
    _no_crash_logged(fuzz_server)


@pytest.mark.parametrize("model", MODELS)
def test_byte_mutations_of_valid_bodies(fuzz_server, model):
    rng = random.Random(f"mutations-{model}")
    dense = model.startswith("ctr")
    explain = model.endswith("explain")
    seen: dict[int, int] = {}
    for size in (0, 1, 3, 20, 100) if explain else (0, 1, 3, 20, 100, 600):
        base = valid_body(rng, size, dense)
        assert _check(fuzz_server, PATHS[model], base) == 200
        for _ in range(160 if explain else 260 if size < 600 else 40):
            body = base
            for _ in range(rng.choice([1, 1, 1, 2, 4])):
                body = mutate(body, rng)
            status = _check(fuzz_server, PATHS[model], body)
            seen[status] = seen.get(status, 0) + 1
    # the mutations reach every kind of answer: still valid, not JSON, and JSON that does not fit
    assert seen.get(200, 0) > 50 and seen.get(400, 0) > 50 and seen.get(422, 0) > 50, seen
    _no_crash_logged(fuzz_server)


# -- hypothesis: random JSON documents and random bytes ---------------------------------------

GROUPS = ["user_id", "city", "ad_id", "category", "nope", ""]
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
feature_values = (st.text(max_size=6) | st.integers(min_value=-5, max_value=2**64 + 5)
                  | st.lists(st.text(max_size=4) | st.integers(min_value=-3, max_value=2**64)
                             | json_scalars, max_size=12)
                  | json_values)
groups = st.dictionaries(st.sampled_from(GROUPS) | st.text(max_size=5), feature_values, max_size=5)
ads = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=4) | st.integers(),
    "features": groups | json_values,
    "dense": st.lists(st.floats(allow_nan=False) | st.integers(min_value=-2**70, max_value=2**70)
                      | json_scalars, max_size=4) | json_values,
})
good_value = st.text(max_size=6) | st.integers(min_value=0, max_value=2**64 - 1) | st.lists(
    st.text(max_size=4) | st.integers(min_value=0, max_value=2**64 - 1), max_size=10)
good_ad = st.fixed_dictionaries({
    "features": st.fixed_dictionaries({}, optional={"ad_id": good_value, "category": good_value}),
    "dense": st.lists(st.floats(min_value=-1e30, max_value=1e30), min_size=1, max_size=3)})
near_valid = st.fixed_dictionaries({"ads": st.lists(good_ad, max_size=5)}, optional={
    "context": st.fixed_dictionaries({}, optional={"user_id": good_value, "city": good_value}),
    "request_id": st.text(max_size=5)})
bodies = near_valid | st.fixed_dictionaries({}, optional={
    "request_id": json_scalars,
    "context": groups | json_values,
    "ads": st.lists(ads | json_values, max_size=6) | json_values,
}) | json_values


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, model=st.sampled_from([*MODELS, None]))
def test_random_documents_never_5xx(fuzz_server, body, model):
    _check(fuzz_server, PATHS[model] if model else "/v1/score", json.dumps(body).encode())


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=64) | st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
       model=st.sampled_from(MODELS))
def test_random_bytes_never_5xx(fuzz_server, raw, model):
    _check(fuzz_server, PATHS[model], raw)


# -- every other parsing path: request line, path, query, headers, admin endpoints --------------

def _raw(server: Server, request: bytes) -> tuple[int, bytes]:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        while length and len(rest) < int(length.group(1)):
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(head[9:12]), rest


def test_hostile_paths_queries_and_headers_on_every_endpoint(fuzz_server):
    from .server import ADMIN_TOKEN

    auth = f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
    targets = [b"GET /v1/models/%ff%fe", b"GET /v1/models/%00", b"GET /v1/models/" + b"a" * 5000,
               b"POST /v1/models/%ff/reload", b"POST /v1/models/ctr/rollback?to=%ff%fe",
               b"POST /v1/models/ctr/rollback?to=" + b"v" * 5000, b"POST /v1/models/ctr/rollback?from=..",
               b"POST /v1/models/ctr/rollback?to=v1&to=v2&from=%00", b"POST /v1/models/../../etc/passwd/reload",
               b"GET /readyz?x=%ff", b"GET /metrics?%%%", b"POST /v1/models/%ff/score", b"GET /v1/score",
               b"POST /v1/models/ctr/score?x=\xff", b"GET /v1/models/ctr%2Fscore",
               b"GET /v1/models/ctr/health?version=%ff%fe", b"GET /v1/models/ctr/health?version=..",
               b"GET /v1/models/ctr/health?version=" + b"v" * 5000, b"GET /v1/models/%ff/health",
               b"POST /v1/models/ctr/promote?version=%00&force=%ff",
               b"POST /v1/models/ctr/promote?version=v1&force=1e400", b"POST /v1/models/ctr/promote",
               b"POST /v1/models/ctr/promote?version=v9&version=v1&force=true",
               b"GET /ui/models/%ff%fe", b"GET /ui?x=\xff", b"GET /ui/models/" + b"a" * 5000,
               b"POST /v1/models/%ff/explain", b"POST /v1/models/ctr/explain?x=\xff",
               b"GET /v1/models/ctr/explain", b"POST /v1/models/" + b"a" * 5000 + b"/explain",
               b"POST /v1/models/ctr/abort?version=%ff%fe", b"POST /v1/models/ctr/abort?version=..",
               b"POST /v1/models/ctr/abort", b"POST /v1/models/ctr/abort?version=" + b"v" * 5000,
               b"POST /v1/models/%ff/abort?version=v1", b"POST /v1/models/ctr/abort?version=nope",
               b"GET /v1/experiments?x=%ff", b"POST /v1/experiments"]
    headers = [auth, b"Authorization: Bearer \xff\xfe\r\n", b"Authorization: \xff\r\n",
               b"Content-Type: \xff/\xfe\r\n" + auth, b"Content-Type: application/json; charset=\xff\r\n"]
    statuses = []
    for target in targets:
        for extra in headers:
            body = b'{"ads":[]}'
            request = (target + b" HTTP/1.1\r\nHost: x\r\n" + extra
                       + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            status, answer = _raw(fuzz_server, request)
            assert status < 500, (request[:200], status, answer[:300])
            if status != 200 and answer != b"Invalid HTTP request received.":  # uvicorn's own parser
                assert isinstance(json.loads(answer)["error"], str), (request[:200], answer[:300])
            statuses.append(status)
    for length in (b"-1", b"99999999999999999999", b"abc", b"1e3"):
        status, _ = _raw(fuzz_server, b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                      b"Content-Length: " + length + b"\r\nConnection: close\r\n\r\n{}")
        assert status in (400, 413, 422), (length, status)
    assert {400, 401, 404, 422} <= set(statuses), sorted(set(statuses))
    _no_crash_logged(fuzz_server)
