"""A compiled scanner from score-request JSON bytes straight to hashed feature arrays.

Decoding a 100-ad body into Python objects, walking them and hashing every string costs about
three times the MLP itself. For the common shape of a score body this scanner does all of it in
one compiled pass over the bytes: it finds each group name, hashes string values with xxh64 where
they lie in the body (no copies), parses integer ids, and writes the run-length ``ids``/``keys``/
``lens`` arrays the kernels take (see ``scoring.engine.features``).

It is deliberately narrow. Anything it does not fully understand (an escape sequence in a string,
non-ASCII text that is not strictly valid UTF-8, dense features, an unknown or repeated key, a
value of the wrong type, a negative or oversized id, too many ads or values) makes it return a
non-zero code, and the caller decodes the body the ordinary way (msgspec + ``FeatureLayout``),
which either scores it or answers with the error naming the field. So it can only make the
common case faster, never change an answer; the tests compare both paths on random bodies.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .config import CACHE
from .simd import load_le
from .xxh64 import xxh64

OK = 0
FALLBACK = 1  # anything outside the fast path's shape: decode the ordinary way

_MAX_ID = np.uint64(0xFFFFFFFFFFFFFFFF)
_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)
_QUOTES = np.uint64(0x2222222222222222)
_SLASHES = np.uint64(0x5C5C5C5C5C5C5C5C)
_SPACES = np.uint64(0x2020202020202020)
# request-id kinds written to meta[3]
RID_NONE = 0
RID_STRING = 1
RID_NUMBER = 2


@njit(cache=CACHE, nogil=True, inline="always")
def _ws(buf, p, n):
    while p < n:
        c = buf[p]
        if c != 32 and c != 10 and c != 13 and c != 9:
            break
        p += 1
    return p


@njit(cache=CACHE, nogil=True, inline="always")
def _next_item(buf, p, n, close):
    """After an array or object item: past a ',' -> (p, 0); past the ``close`` byte -> (p, 1);
    anything else -> (-1, -1)."""
    p = _ws(buf, p, n)
    if p < n and buf[p] == 44:
        return _ws(buf, p + 1, n), 0
    if p < n and buf[p] == close:
        return p + 1, 1
    return -1, -1


@njit(cache=CACHE, nogil=True, inline="always")
def _key(buf, p, n):
    """An object key at ``p`` and its colon: (key start, key end, index of the value), or
    (-1, -1, -1)."""
    if p >= n or buf[p] != 34:
        return -1, -1, -1
    e = _string_end(buf, p, n)
    if e < 0:
        return -1, -1, -1
    q = _ws(buf, e + 1, n)
    if q >= n or buf[q] != 58:
        return -1, -1, -1
    return p + 1, e, _ws(buf, q + 1, n)


@njit(cache=CACHE, nogil=True, inline="always")
def _string_end(buf, p, n):
    """``buf[p]`` is the opening quote; return the index of the closing quote, or -1 when the
    string has an escape, a control character, invalid UTF-8 or no end."""
    q = p + 1
    while q < n:
        # eight plain ASCII bytes at a time: no quote, backslash, control or non-ASCII byte
        while q + 8 <= n:
            v = load_le(buf, q, 8)
            quote = v ^ _QUOTES
            slash = v ^ _SLASHES
            special = (((quote - _ONES) & ~quote) | ((slash - _ONES) & ~slash)
                       | ((v - _SPACES) & ~v) | v) & _HIGHS
            if special != 0:
                break
            q += 8
        if q >= n:
            break
        c = buf[q]
        if c == 34:  # '"'
            return q
        if c == 92 or c < 32:  # backslash: escapes are left to the ordinary decoder
            return -1
        if c < 128:
            q += 1
            continue
        # strict UTF-8: no overlongs, no surrogates, nothing above U+10FFFF
        if 0xC2 <= c <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif c == 0xE0:
            need, lo, hi = 2, 0xA0, 0xBF
        elif 0xE1 <= c <= 0xEC or c == 0xEE or c == 0xEF:
            need, lo, hi = 2, 0x80, 0xBF
        elif c == 0xED:
            need, lo, hi = 2, 0x80, 0x9F
        elif c == 0xF0:
            need, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= c <= 0xF3:
            need, lo, hi = 3, 0x80, 0xBF
        elif c == 0xF4:
            need, lo, hi = 3, 0x80, 0x8F
        else:
            return -1
        if q + need >= n:
            return -1
        b1 = buf[q + 1]
        if b1 < lo or b1 > hi:
            return -1
        for i in range(2, need + 1):
            b = buf[q + i]
            if b < 0x80 or b > 0xBF:
                return -1
        q += need + 1
    return -1


@njit(cache=CACHE, nogil=True, inline="always")
def _number(buf, p, n, out):
    """Parse an unsigned decimal integer id at ``p`` into ``out[0]``; return the end index,
    or -1 for anything else (sign, fraction, exponent, leading zero, more than 2**64 - 1)."""
    q = p
    v = np.uint64(0)
    while q < n and 48 <= buf[q] <= 57:
        d = np.uint64(buf[q] - 48)
        if v > (_MAX_ID - d) // np.uint64(10):
            return -1
        v = v * np.uint64(10) + d
        q += 1
    if q == p or (buf[p] == 48 and q - p > 1):
        return -1
    if q < n and (buf[q] == 46 or buf[q] == 101 or buf[q] == 69):  # '.', 'e', 'E'
        return -1
    out[0] = v
    return q


@njit(cache=CACHE, nogil=True, inline="always")
def _is_literal(buf, p, n, lit):
    if p + lit.shape[0] > n:
        return False
    for i in range(lit.shape[0]):
        if buf[p + i] != lit[i]:
            return False
    return True


@njit(cache=CACHE, nogil=True, inline="always")
def _is_name(buf, s, e, names, name_off, i):
    """Whether ``buf[s:e]`` is name ``i``."""
    if name_off[i + 1] - name_off[i] != e - s:
        return False
    base = name_off[i]
    for k in range(e - s):
        if names[base + k] != buf[s + k]:
            return False
    return True


@njit(cache=CACHE, nogil=True, inline="always")
def _lookup_after(buf, s, e, names, name_off, name_hash, prev):
    """``_lookup``, trying first the name after ``prev`` (keys of one object usually come in the
    same order every time, so this skips the hash for all but the first)."""
    nxt = prev + 1
    if prev >= 0 and nxt < name_hash.shape[0] and _is_name(buf, s, e, names, name_off, nxt):
        return nxt
    return _lookup(buf, s, e, names, name_off, name_hash)


@njit(cache=CACHE, nogil=True, inline="always")
def _lookup(buf, s, e, names, name_off, name_hash):
    """Index of the name equal to ``buf[s:e]``, or -1."""
    h = xxh64(buf, s, e - s)
    for i in range(name_hash.shape[0]):
        if name_hash[i] == h and _is_name(buf, s, e, names, name_off, i):
            return i
    return -1


@njit(cache=CACHE, nogil=True, inline="always")
def _skip_scalar(buf, p, n, lit_null, num):
    """Skip a string, an unsigned integer or null (the ``id`` of an ad); -1 if it is not one."""
    if p < n and buf[p] == 34:
        e = _string_end(buf, p, n)
        return -1 if e < 0 else e + 1
    if _is_literal(buf, p, n, lit_null):
        return p + 4
    return _number(buf, p, n, num)


@njit(cache=CACHE, nogil=True, _nrt=False)
def _groups(buf, p, n, group_names, group_off, group_hash, group_slot, side, want_side, base,
            ids, keys, lens, counts, seen, max_values, num):
    """Scan one object of group -> value(s) at ``p`` ('{'); returns the index after '}' or -1.

    ``counts`` holds [values written, entries written]."""
    p = _ws(buf, p + 1, n)
    for s in range(seen.shape[0]):
        seen[s] = False
    if p < n and buf[p] == 125:  # '}'
        return p + 1
    g = -1
    while True:
        key_s, key_e, p = _key(buf, p, n)
        if p < 0:
            return -1
        g = _lookup_after(buf, key_s, key_e, group_names, group_off, group_hash, g)
        if g < 0 or side[g] != want_side:
            return -1  # unknown group, or one of the other side: the ordinary path names it
        slot = group_slot[g]
        if seen[slot]:
            return -1
        seen[slot] = True
        v0 = counts[0]
        if p < n and buf[p] == 91:  # '['
            p = _ws(buf, p + 1, n)
            if p < n and buf[p] == 93:
                p += 1
            else:
                closed = 0
                while closed == 0:
                    p = _value(buf, p, n, ids, counts, num)
                    if p < 0:
                        return -1
                    p, closed = _next_item(buf, p, n, 93)
                    if p < 0:
                        return -1
        else:
            p = _value(buf, p, n, ids, counts, num)
            if p < 0:
                return -1
        m = counts[0] - v0
        if m > max_values:
            return -1
        entry = counts[1]
        keys[entry] = base + slot
        lens[entry] = m
        counts[1] = entry + 1
        p, closed = _next_item(buf, p, n, 125)
        if closed != 0:
            return p


@njit(cache=CACHE, nogil=True, inline="always")
def _value(buf, p, n, ids, counts, num):
    """One feature value (string or unsigned integer id) at ``p`` into ``ids``; end or -1."""
    k = counts[0]
    if k >= ids.shape[0]:
        return -1
    if p < n and buf[p] == 34:
        e = _string_end(buf, p, n)
        if e < 0:
            return -1
        ids[k] = xxh64(buf, p + 1, e - p - 1)
        counts[0] = k + 1
        return e + 1
    q = _number(buf, p, n, num)
    if q < 0:
        return -1
    ids[k] = num[0]
    counts[0] = k + 1
    return q


@njit(cache=CACHE, nogil=True, _nrt=False)
def scan_request(buf, group_names, group_off, group_hash, group_slot, group_side, n_ad_slots,
                 max_ads, max_values, lits, ctx_ids, ctx_keys, ctx_lens, ad_ids, ad_keys, ad_lens,
                 meta, num, seen, have):
    """Scan a whole score body. Returns OK with ``meta`` = [n_ctx_values, n_ctx_entries,
    n_ad_values, n_ad_entries, n_ads, request_id kind, request_id start, request_id end], or
    FALLBACK. ``lits`` is the tuple of literals null, context, ads, request_id, id, features,
    dense as uint8 arrays; ``num`` (uint64[1]), ``seen`` (bool, one per slot) and ``have``
    (bool[3]) are the caller's scratch."""
    n = buf.shape[0]
    lit_null = lits[0]
    for i in range(meta.shape[0]):
        meta[i] = 0
    c_counts = meta[0:2]
    a_counts = meta[2:4]
    have_ads = False
    have_ctx = False
    have_rid = False
    p = _ws(buf, 0, n)
    if p >= n or buf[p] != 123:
        return FALLBACK
    p = _ws(buf, p + 1, n)
    if p < n and buf[p] == 125:
        return FALLBACK  # no "ads": the ordinary decoder says so
    while True:
        key_s, key_e, p = _key(buf, p, n)
        if p < 0:
            return FALLBACK
        key_len = key_e - key_s
        if key_len == 7 and _is_literal(buf, key_s, n, lits[1]):  # "context"
            if have_ctx:
                return FALLBACK
            have_ctx = True
            if _is_literal(buf, p, n, lit_null):
                p += 4
            elif p < n and buf[p] == 123:
                p = _groups(buf, p, n, group_names, group_off, group_hash, group_slot, group_side,
                            0, 0, ctx_ids, ctx_keys, ctx_lens, c_counts, seen, max_values, num)
                if p < 0:
                    return FALLBACK
            else:
                return FALLBACK
        elif key_len == 3 and _is_literal(buf, key_s, n, lits[2]):  # "ads"
            if have_ads or p >= n or buf[p] != 91:
                return FALLBACK
            have_ads = True
            p = _ws(buf, p + 1, n)
            row = 0
            if p < n and buf[p] == 93:
                p += 1
            else:
                closed = 0
                while closed == 0:
                    if row >= max_ads:
                        return FALLBACK
                    p = _ad(buf, p, n, row, group_names, group_off, group_hash, group_slot,
                            group_side, n_ad_slots, ad_ids, ad_keys, ad_lens, a_counts, seen,
                            max_values, num, lits, have)
                    if p < 0:
                        return FALLBACK
                    row += 1
                    p, closed = _next_item(buf, p, n, 93)
                    if p < 0:
                        return FALLBACK
            meta[4] = row
        elif key_len == 10 and _is_literal(buf, key_s, n, lits[3]):  # "request_id"
            if have_rid:
                return FALLBACK
            have_rid = True
            if p < n and buf[p] == 34:
                e = _string_end(buf, p, n)
                if e < 0:
                    return FALLBACK
                meta[5] = RID_STRING
                meta[6] = p
                meta[7] = e + 1
                p = e + 1
            elif _is_literal(buf, p, n, lit_null):
                p += 4
            else:
                q = _number(buf, p, n, num)
                if q < 0:
                    return FALLBACK
                meta[5] = RID_NUMBER
                meta[6] = p
                meta[7] = q
                p = q
        else:
            return FALLBACK
        p, closed = _next_item(buf, p, n, 125)
        if p < 0:
            return FALLBACK
        if closed:
            p = _ws(buf, p, n)
            break
    if p != n or not have_ads:
        return FALLBACK
    return OK


@njit(cache=CACHE, nogil=True, _nrt=False)
def _ad(buf, p, n, row, group_names, group_off, group_hash, group_slot, group_side, n_ad_slots,
        ids, keys, lens, counts, seen, max_values, num, lits, have):
    """One ad object at ``p``: "id" skipped, "features" scanned, "dense" only null or []."""
    if p >= n or buf[p] != 123:
        return -1
    p = _ws(buf, p + 1, n)
    if p < n and buf[p] == 125:
        return p + 1
    have[0] = have[1] = have[2] = False
    while True:
        key_s, key_e, p = _key(buf, p, n)
        if p < 0:
            return -1
        key_len = key_e - key_s
        if key_len == 8 and _is_literal(buf, key_s, n, lits[5]):  # "features"
            if have[0]:
                return -1
            have[0] = True
            if _is_literal(buf, p, n, lits[0]):
                p += 4
            elif p < n and buf[p] == 123:
                p = _groups(buf, p, n, group_names, group_off, group_hash, group_slot, group_side,
                            1, row * n_ad_slots, ids, keys, lens, counts, seen, max_values, num)
                if p < 0:
                    return -1
            else:
                return -1
        elif key_len == 2 and _is_literal(buf, key_s, n, lits[4]):  # "id"
            if have[1]:
                return -1
            have[1] = True
            p = _skip_scalar(buf, p, n, lits[0], num)
            if p < 0:
                return -1
        elif key_len == 5 and _is_literal(buf, key_s, n, lits[6]):  # "dense"
            if have[2]:
                return -1
            have[2] = True
            if _is_literal(buf, p, n, lits[0]):
                p += 4
            elif p < n and buf[p] == 91:
                p = _ws(buf, p + 1, n)
                if p >= n or buf[p] != 93:
                    return -1  # dense values: the ordinary path parses floats exactly
                p += 1
            else:
                return -1
        else:
            return -1
        p, closed = _next_item(buf, p, n, 125)
        if closed != 0:
            return p
