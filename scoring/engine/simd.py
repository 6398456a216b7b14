"""A register-tiled GEMM micro-kernel written as LLVM IR, for Numba code to call inline.

LLVM vectorises Numba's scalar loops only along one loop, so a dot-product tile needs a horizontal
sum per output, which costs about a quarter of the time of a 256-input layer. This micro-kernel
is the broadcast (outer-product) form that BLAS libraries use instead: for ``A`` ads and
``16 * V`` neurons it keeps ``A * V`` vector accumulators in registers; per input ``k`` it loads
``V`` vectors of the weight row ``w[k, j0:j0 + 16V]`` (weights [in, out], read in order) and
broadcasts each ad's ``x[a, k]``, then does ``A * V`` fused multiply-adds. No horizontal sums, no
stores until the end. With ``A=6, V=4`` it reaches ~115 GFLOP/s on one core here, against ~86 for
the best dot-product tile Numba's vectoriser made from scalar code.

The accumulators are allocas that LLVM's SROA turns into registers. Also here: the bf16 tile
(``make_bf16_tile``, AVX512-BF16 ``vdpbf16ps`` where the kernels' target has it, two float32
FMAs otherwise), the row accumulator of the pooling kernel (float32, float16, int8 rows) and
address helpers. Imports nothing of ours but ``codegen`` (which target the kernels compile for).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16  # float32 lanes of one accumulator vector; LLVM splits it for narrower machines
_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, LANES)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _is_c_matrix(t, ndim: int) -> bool:
    return isinstance(t, types.Array) and t.ndim == ndim and t.layout == "C" and t.dtype == types.float32


class _Emitter:
    """IR helpers shared by the micro-kernels: array pointers, row strides, splats, FMA."""

    def __init__(self, context, builder, signature, args) -> None:
        self.context, self.b = context, builder
        self.sig, self.args = signature, args
        self.vptr = _VEC.as_pointer()
        self.zero = ir.Constant(_VEC, [0.0] * LANES)
        self._undef = ir.Constant(_VEC, ir.Undefined)
        self._splat0 = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
        self.fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), "llvm.fma.v16f32")

    def array(self, i):
        return self.context.make_array(self.sig.args[i])(self.context, self.b, self.args[i])

    def int64(self, i):
        return self.context.cast(self.b, self.args[i], self.sig.args[i], types.int64)

    def row_stride(self, arr):
        """Elements between rows of a 2-D float32 array."""
        return self.b.sdiv(cgutils.unpack_tuple(self.b, arr.strides, 2)[0], _I64(4))

    def cols(self, arr):
        return cgutils.unpack_tuple(self.b, arr.shape, 2)[1]

    def splat(self, scalar):
        return self.b.shuffle_vector(self.b.insert_element(self._undef, scalar, _I32(0)),
                                     self._undef, self._splat0)

    def load_vec(self, ptr, v):
        return self.b.load(self.b.bitcast(self.b.gep(ptr, [_I64(v * LANES)]), self.vptr), align=4)

    def store_vec(self, value, ptr, v):
        self.b.store(value, self.b.bitcast(self.b.gep(ptr, [_I64(v * LANES)]), self.vptr), align=4)

    def finish(self, acc, bias_vec, relu):
        """``acc + bias``, through ReLU when ``relu``; a NaN stays NaN (the engine refuses it)."""
        r = self.b.fadd(acc, bias_vec)
        clipped = self.b.select(self.b.fcmp_ordered("<=", r, self.zero), self.zero, r)
        return self.b.select(relu, clipped, r)

    def tile_rows(self, rows):
        """The tiles' common arguments ``(x, a0, k, w, bias, y, relu)``: (w array, bias array, w
        row stride, k, relu flag, pointers to the ``rows`` rows of x and of y)."""
        b = self.b
        xa, wa, ba, ya = self.array(0), self.array(3), self.array(4), self.array(5)
        ldx, ldw, ldy = self.row_stride(xa), self.row_stride(wa), self.row_stride(ya)
        a0, k = self.int64(1), self.int64(2)
        relu = b.icmp_signed("!=", self.int64(6), _I64(0))
        x_rows = [b.gep(xa.data, [b.mul(b.add(a0, _I64(a)), ldx)]) for a in range(rows)]
        y_rows = [b.gep(ya.data, [b.mul(b.add(a0, _I64(a)), ldy)]) for a in range(rows)]
        return wa, ba, ldw, k, relu, x_rows, y_rows

    def store_tile(self, accs, ba, j0, y_rows, relu):
        """``y[row, j0 + 16v:] = act(accs[row][v] + bias)`` for every accumulator of a tile."""
        b = self.b
        b_row = b.gep(ba.data, [j0])
        for v in range(len(accs[0])):
            bias_v = self.load_vec(b_row, v)
            for a, y_row in enumerate(y_rows):
                self.store_vec(self.finish(b.load(accs[a][v]), bias_v, relu), b.gep(y_row, [j0]), v)

    def column_blocks(self, n_out, widths, emit):
        """Call ``emit(j0, vectors)`` over ``[0, n_out)``: blocks of ``widths[0]`` vectors while
        they fit, then at most one block of each smaller width. Returns the first column left."""
        b = self.b
        big = widths[0] * LANES
        j = cgutils.alloca_once_value(b, _I64(0))
        with cgutils.for_range(b, b.sdiv(n_out, _I64(big))) as loop:
            j0 = b.mul(loop.index, _I64(big))
            emit(j0, widths[0])
            b.store(b.add(j0, _I64(big)), j)
        for vectors in widths[1:]:
            width = _I64(vectors * LANES)
            j0 = b.load(j)
            with b.if_then(b.icmp_signed("<=", b.add(j0, width), n_out)):
                emit(j0, vectors)
                b.store(b.add(j0, width), j)
        return b.load(j)


def make_tile(rows: int, widths: tuple[int, ...] = (4, 2, 1)):
    """An intrinsic ``tile(x, a0, k_in, w, bias, y, relu) -> j_end`` computing
    ``y[a0:a0+rows, :j_end] = act(x[a0:a0+rows, :k_in] @ w[:k_in, :j_end] + bias[:j_end])`` for
    every neuron that fills a 16-lane vector (``j_end`` = out rounded down to 16), in register
    blocks of ``rows`` ads x 64, 32 or 16 neurons. ``act`` is ReLU when ``relu`` is non-zero,
    else identity. Arrays must be float32, C order; the caller guarantees the rows exist."""

    @intrinsic
    def tile(typingctx, x, a0, k_in, w, bias, y, relu):
        if not (_is_c_matrix(x, 2) and _is_c_matrix(w, 2) and _is_c_matrix(y, 2)
                and _is_c_matrix(bias, 1)):
            return None
        sig = types.int64(x, a0, k_in, w, bias, y, relu)

        def codegen(context, builder, signature, args):
            e = _Emitter(context, builder, signature, args)
            b = builder
            wa, ba, ldw, k_in, relu, x_rows, y_rows = e.tile_rows(rows)

            def emit(j0, vectors):
                accs = [[cgutils.alloca_once_value(b, e.zero) for _ in range(vectors)]
                        for _ in range(rows)]
                w_base = b.gep(wa.data, [j0])
                with cgutils.for_range(b, k_in) as loop:
                    k = loop.index
                    w_row = b.gep(w_base, [b.mul(k, ldw)])
                    w_vecs = [e.load_vec(w_row, v) for v in range(vectors)]
                    for a in range(rows):
                        xk = e.splat(b.load(b.gep(x_rows[a], [k])))
                        for v in range(vectors):
                            b.store(b.call(e.fma, [xk, w_vecs[v], b.load(accs[a][v])]), accs[a][v])
                e.store_tile(accs, ba, j0, y_rows, relu)

            return e.column_blocks(e.cols(wa), widths, emit)

        return sig, codegen

    return tile


def make_sparse_row():
    """An intrinsic ``row(idx, vals, m, w, bias, y, a, relu) -> j_end`` computing
    ``y[a, :j_end] = act(sum over q < m of vals[q] * w[idx[q], :j_end] + bias[:j_end])``.

    The pruned form for one ad: ``idx``/``vals`` list only the inputs ReLU left non-zero, so a
    pruned input never touches its weight row, and each output block (up to 256 neurons in 16
    vectors) stays in registers until the end. ``j_end`` is out rounded down to 16."""

    @intrinsic
    def row(typingctx, idx, vals, m, w, bias, y, a, relu):
        if not (isinstance(idx, types.Array) and idx.ndim == 1 and idx.layout == "C"
                and idx.dtype == types.int64 and _is_c_matrix(vals, 1) and _is_c_matrix(w, 2)
                and _is_c_matrix(y, 2) and _is_c_matrix(bias, 1)):
            return None
        sig = types.int64(idx, vals, m, w, bias, y, a, relu)

        def codegen(context, builder, signature, args):
            e = _Emitter(context, builder, signature, args)
            b = builder
            ia, va, wa, ba, ya = e.array(0), e.array(1), e.array(3), e.array(4), e.array(5)
            ldw, ldy = e.row_stride(wa), e.row_stride(ya)
            m, a = e.int64(2), e.int64(6)
            relu = b.icmp_signed("!=", e.int64(7), _I64(0))
            y_row = b.gep(ya.data, [b.mul(a, ldy)])

            def emit(j0, vectors):
                accs = [cgutils.alloca_once_value(b, e.zero) for _ in range(vectors)]
                w_base = b.gep(wa.data, [j0])
                with cgutils.for_range(b, m) as loop:
                    q = loop.index
                    k = b.load(b.gep(ia.data, [q]))
                    xk = e.splat(b.load(b.gep(va.data, [q])))
                    w_row = b.gep(w_base, [b.mul(k, ldw)])
                    for v in range(vectors):
                        b.store(b.call(e.fma, [xk, e.load_vec(w_row, v), b.load(accs[v])]), accs[v])
                b_row = b.gep(ba.data, [j0])
                for v in range(vectors):
                    e.store_vec(e.finish(b.load(accs[v]), e.load_vec(b_row, v), relu),
                                b.gep(y_row, [j0]), v)

            return e.column_blocks(e.cols(wa), (16, 8, 4, 2, 1), emit)

        return sig, codegen

    return row


_I8P = ir.IntType(8).as_pointer()


@intrinsic
def prefetch_row(typingctx, base, row, row_bytes):
    """Hint the CPU to fetch row ``row`` of the table at address ``base`` (rows of ``row_bytes``
    bytes): its first cache line, and the next one when the row reaches into it (at most two).
    A gather that will miss: embedding rows are scattered over tables of hundreds of MB."""
    if not all(isinstance(t, types.Integer) for t in (base, row, row_bytes)):
        return None
    sig = types.void(base, row, row_bytes)

    def codegen(context, builder, signature, args):
        b_t, r_t, s_t = signature.args
        base_v = context.cast(builder, args[0], b_t, types.int64)
        r = context.cast(builder, args[1], r_t, types.int64)
        stride = context.cast(builder, args[2], s_t, types.int64)
        addr = builder.add(base_v, builder.mul(r, stride))
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_I8P, _I32, _I32, _I32]), "llvm.prefetch.p0")
        builder.call(fn, [builder.inttoptr(addr, _I8P), _I32(0), _I32(3), _I32(1)])
        # the second line only for rows that reach it (not an int8 row of 32 bytes, nor qparams)
        last = builder.add(addr, builder.sub(stride, _I64(1)))
        with builder.if_then(builder.icmp_unsigned(
                "!=", builder.lshr(addr, _I64(6)), builder.lshr(last, _I64(6)))):
            ptr = builder.inttoptr(builder.add(addr, _I64(64)), _I8P)
            builder.call(fn, [ptr, _I32(0), _I32(3), _I32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def f32_at(typingctx, base):
    """The float32 array at address ``base`` as a pointer the kernel can index (``p[i]``).

    Tables reach the kernels as addresses (an int64 array, one per group) rather than a list of
    arrays: a list of arrays needs Numba's reference counting, an atomic operation per access,
    and the kernels run without it. The engine keeps the arrays alive while it scores."""
    if not isinstance(base, types.Integer):
        return None
    sig = types.CPointer(types.float32)(base)

    def codegen(context, builder, signature, args):
        addr = context.cast(builder, args[0], signature.args[0], types.int64)
        return builder.inttoptr(addr, _F32.as_pointer())

    return sig, codegen


@intrinsic
def load_le(typingctx, buf, p, nbytes):
    """The little-endian unsigned integer of ``buf[p:p + nbytes]`` (``nbytes`` 4 or 8, a
    compile-time literal) in one unaligned load; ``buf`` is a C-order uint8 array."""
    if not (isinstance(buf, types.Array) and buf.dtype == types.uint8 and buf.layout == "C"
            and isinstance(nbytes, types.IntegerLiteral) and nbytes.literal_value in (4, 8)):
        return None
    width = nbytes.literal_value * 8
    sig = types.uint64(buf, p, nbytes)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        pos = context.cast(builder, args[1], signature.args[1], types.int64)
        ptr = builder.bitcast(builder.gep(arr.data, [pos]), ir.IntType(width).as_pointer())
        value = builder.load(ptr, align=1)
        return builder.zext(value, _I64) if width < 64 else value

    return sig, codegen


def _target_has(feature: str) -> bool:
    # the target the kernels compile for, not necessarily the host
    from .codegen import target_has
    return target_has(feature)


def _half_bits_to_float(b, bits, vec: bool):
    """IEEE half (as i16 bits, scalar or 16 lanes) -> float32 with integer operations, for targets
    without F16C, where LLVM would call ``__extendhfsf2``, which a JIT cannot link. Exact for
    normals, subnormals, zeros, infinities and NaNs (shift the exponent and mantissa into place,
    rebias; subnormals through one float subtraction)."""
    i32 = ir.VectorType(_I32, LANES) if vec else _I32
    f32 = _VEC if vec else _F32

    def c(v):
        return ir.Constant(i32, [v] * LANES) if vec else ir.Constant(_I32, v)

    h = b.zext(bits, i32)
    sign = b.shl(b.and_(h, c(0x8000)), c(16))
    em = b.shl(b.and_(h, c(0x7FFF)), c(13))
    exp = b.and_(em, c(0x0F800000))
    o = b.add(em, c(112 << 23))                                    # rebias 15 -> 127
    inf_nan = b.add(o, c(112 << 23))                               # exponent all ones
    magic = b.bitcast(c(113 << 23), f32)
    sub = b.bitcast(b.fsub(b.bitcast(b.add(o, c(1 << 23)), f32), magic), i32)  # zero, subnormal
    out = b.select(b.icmp_unsigned("==", exp, c(0x0F800000)), inf_nan,
                   b.select(b.icmp_unsigned("==", exp, c(0)), sub, o))
    return b.bitcast(b.or_(out, sign), f32)


def make_row_accumulate(storage: str):
    """An intrinsic ``acc(out, r, c0, src, dim, scale, offset)``: ``out[r, c0:c0 + dim] += row *
    scale + offset``, where ``row`` is the table row at address ``src`` stored as ``storage``
    ("float32", "float16" or "int8": an int8 row's (scale, offset) are its quantization, times a
    weighted group's weight; float32 arithmetic),
    sixteen lanes at a time, the rest one by one.

    Written as IR because LLVM does not vectorise the plain loop: it cannot tell that the
    output row and a table reached through an address do not overlap."""
    align = {"float32": 4, "float16": 2, "int8": 1}[storage]

    def element_type():
        if storage == "float16" and not _target_has("f16c"):
            return ir.IntType(16)  # widened with integer operations (``_half_bits_to_float``)
        return {"float32": _F32, "float16": ir.HalfType(), "int8": ir.IntType(8)}[storage]

    def widen(b, value, vec: bool):
        if storage == "float32":
            return value
        ty = _VEC if vec else _F32
        if storage == "int8":
            return b.sitofp(value, ty)
        if isinstance(value.type.element if vec else value.type, ir.HalfType):
            return b.fpext(value, ty)
        return _half_bits_to_float(b, value, vec)

    @intrinsic
    def acc(typingctx, out, r, c0, src, dim, scale, offset):
        if not (_is_c_matrix(out, 2) and all(isinstance(t, types.Integer) for t in (r, c0, src, dim))
                and all(isinstance(t, types.Float) for t in (scale, offset))):
            return None
        sig = types.void(out, r, c0, src, dim, scale, offset)

        def codegen(context, builder, signature, args):
            e = _Emitter(context, builder, signature, args)
            b = builder
            elem = element_type()
            oa = e.array(0)
            row0 = b.add(b.mul(e.int64(1), e.row_stride(oa)), e.int64(2))
            out_p = b.gep(oa.data, [row0])
            src_p = b.inttoptr(e.int64(3), elem.as_pointer())
            dim_v = e.int64(4)
            sc = context.cast(b, args[5], signature.args[5], types.float32)
            of = context.cast(b, args[6], signature.args[6], types.float32)
            sc_v, of_v = e.splat(sc), e.splat(of)
            vec_ty = ir.VectorType(elem, LANES)
            n_vec = b.sdiv(dim_v, _I64(LANES))
            with cgutils.for_range(b, n_vec) as loop:
                j = b.mul(loop.index, _I64(LANES))
                raw = b.load(b.bitcast(b.gep(src_p, [j]), vec_ty.as_pointer()), align=align)
                x = b.call(e.fma, [widen(b, raw, True), sc_v, of_v])
                o = e.load_vec(b.gep(out_p, [j]), 0)
                e.store_vec(b.fadd(o, x), b.gep(out_p, [j]), 0)
            start = b.mul(n_vec, _I64(LANES))
            with cgutils.for_range(b, b.sub(dim_v, start)) as loop:
                j = b.add(start, loop.index)
                x = b.fadd(b.fmul(widen(b, b.load(b.gep(src_p, [j]), align=align), False), sc), of)
                p = b.gep(out_p, [j])
                b.store(b.fadd(b.load(p, align=4), x), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return acc


class _BFloat16(ir.types._BaseFloatType):
    """LLVM's ``bfloat`` (llvmlite has no class for it; its IR is text, so the name suffices)."""

    null = "0.0"
    intrinsic_name = "bf16"

    def __str__(self) -> str:
        return "bfloat"


_BFloat16._create_instance()
_PAIRS = ir.VectorType(_BFloat16(), 2 * LANES)  # 16 dwords, each two bf16 (even k low, odd k high)
_I32VEC = ir.VectorType(_I32, LANES)


def _native_bf16() -> bool:
    return _target_has("avx512bf16")


def _is_c_u32(t, ndim: int) -> bool:
    return isinstance(t, types.Array) and t.ndim == ndim and t.layout == "C" and t.dtype == types.uint32


def make_bf16_tile(rows: int):
    """An intrinsic ``tile(xp, a0, k_pairs, wp, bias, y, relu) -> j_end``: the register tile of
    ``make_tile`` on bfloat16 pairs, for CPUs with AVX512-BF16. ``xp[a, i]`` holds the ad's
    inputs ``2i`` and ``2i + 1`` as two bf16 in one uint32; ``wp[i, j]`` the same for weight rows
    ``2i``, ``2i + 1`` of neuron ``j``. Each ``vdpbf16ps`` does two inputs' multiply-adds for 16
    neurons, with float32 sums: half the instructions of the float32 tile."""

    @intrinsic
    def tile(typingctx, xp, a0, k_pairs, wp, bias, y, relu):
        if not (_is_c_u32(xp, 2) and _is_c_u32(wp, 2) and _is_c_matrix(y, 2)
                and _is_c_matrix(bias, 1)):
            return None
        sig = types.int64(xp, a0, k_pairs, wp, bias, y, relu)

        def codegen(context, builder, signature, args):
            e = _Emitter(context, builder, signature, args)
            b = builder
            if _native_bf16():
                dp_fn = cgutils.get_or_insert_function(
                    b.module, ir.FunctionType(_VEC, [_VEC, _PAIRS, _PAIRS]),
                    "llvm.x86.avx512bf16.dpbf16ps.512")

                def dp(acc, xs, ws):
                    return b.call(dp_fn, [acc, b.bitcast(xs, _PAIRS), b.bitcast(ws, _PAIRS)])
            else:  # the same sums with two float32 FMAs (a CPU without the instruction)
                high = ir.Constant(_I32VEC, [0xFFFF0000] * LANES)
                sixteen = ir.Constant(_I32VEC, [16] * LANES)

                def dp(acc, xs, ws):
                    lo = b.call(e.fma, [b.bitcast(b.shl(xs, sixteen), _VEC),
                                        b.bitcast(b.shl(ws, sixteen), _VEC), acc])
                    return b.call(e.fma, [b.bitcast(b.and_(xs, high), _VEC),
                                          b.bitcast(b.and_(ws, high), _VEC), lo])
            wa, ba, ldw, k_pairs, relu, x_rows, y_rows = e.tile_rows(rows)
            splat0 = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
            undef = ir.Constant(_I32VEC, ir.Undefined)

            def emit(j0, vectors):
                accs = [[cgutils.alloca_once_value(b, e.zero) for _ in range(vectors)]
                        for _ in range(rows)]
                w_base = b.gep(wa.data, [j0])
                with cgutils.for_range(b, k_pairs) as loop:
                    k = loop.index
                    w_row = b.gep(w_base, [b.mul(k, ldw)])
                    w_vecs = [b.load(b.bitcast(b.gep(w_row, [_I64(v * LANES)]), _I32VEC.as_pointer()),
                                     align=4) for v in range(vectors)]
                    for a in range(rows):
                        xk = b.load(b.gep(x_rows[a], [k]), align=4)
                        xs = b.shuffle_vector(b.insert_element(undef, xk, _I32(0)), undef, splat0)
                        for v in range(vectors):
                            b.store(dp(b.load(accs[a][v]), xs, w_vecs[v]), accs[a][v])
                e.store_tile(accs, ba, j0, y_rows, relu)

            return e.column_blocks(e.cols(wa), (4, 2, 1), emit)

        return sig, codegen

    return tile
