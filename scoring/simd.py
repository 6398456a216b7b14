"""A register-tiled GEMM micro-kernel written as LLVM IR, for Numba code to call inline.

LLVM vectorises Numba's scalar loops only along one loop, so a dot-product tile needs a horizontal
sum per output, which costs about a quarter of the time of a 256-input layer. This micro-kernel
is the broadcast (outer-product) form that BLAS libraries use instead: for ``A`` ads and
``16 * V`` neurons it keeps ``A * V`` vector accumulators in registers; per input ``k`` it loads
``V`` vectors of the weight row ``w[k, j0:j0 + 16V]`` (weights [in, out], read in order) and
broadcasts each ad's ``x[a, k]``, then does ``A * V`` fused multiply-adds. No horizontal sums, no
stores until the end. With ``A=6, V=4`` it reaches ~115 GFLOP/s on one core here, against ~86 for
the best dot-product tile Numba's vectoriser made from scalar code.

Imports nothing of ours; the accumulators are allocas that LLVM's SROA turns into registers.
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


def make_tile(rows: int, vectors: int):
    """An intrinsic ``tile(x, a0, k_in, w, j0, bias, y, relu)`` computing
    ``y[a0:a0+rows, j0:j0+16*vectors] = act(x[a0:a0+rows, :k_in] @ w[:k_in, j0:...] + bias[j0:...])``
    with ``act`` ReLU when ``relu`` is non-zero, else identity. Arrays must be float32, C order;
    the caller guarantees the block lies inside them."""

    @intrinsic
    def tile(typingctx, x, a0, k_in, w, j0, bias, y, relu):
        if not (_is_c_matrix(x, 2) and _is_c_matrix(w, 2) and _is_c_matrix(y, 2)
                and _is_c_matrix(bias, 1)):
            return None
        sig = types.void(x, a0, k_in, w, j0, bias, y, relu)

        def codegen(context, builder, signature, args):
            x_v, a0_v, k_v, w_v, j0_v, b_v, y_v, relu_v = args
            x_t, a0_t, k_t, w_t, j0_t, b_t, y_t, relu_t = signature.args
            xa = context.make_array(x_t)(context, builder, x_v)
            wa = context.make_array(w_t)(context, builder, w_v)
            ba = context.make_array(b_t)(context, builder, b_v)
            ya = context.make_array(y_t)(context, builder, y_v)
            four = _I64(4)
            ldx = builder.sdiv(cgutils.unpack_tuple(builder, xa.strides, 2)[0], four)
            ldw = builder.sdiv(cgutils.unpack_tuple(builder, wa.strides, 2)[0], four)
            ldy = builder.sdiv(cgutils.unpack_tuple(builder, ya.strides, 2)[0], four)
            a0 = context.cast(builder, a0_v, a0_t, types.int64)
            j0 = context.cast(builder, j0_v, j0_t, types.int64)
            k_in = context.cast(builder, k_v, k_t, types.int64)
            relu = builder.icmp_signed("!=", context.cast(builder, relu_v, relu_t, types.int64), _I64(0))
            vptr = _VEC.as_pointer()
            zero = ir.Constant(_VEC, [0.0] * LANES)
            undef = ir.Constant(_VEC, ir.Undefined)
            splat = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), "llvm.fma.v16f32")

            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
                    for _ in range(rows)]
            x_rows = [builder.gep(xa.data, [builder.mul(builder.add(a0, _I64(a)), ldx)])
                      for a in range(rows)]
            w_base = builder.gep(wa.data, [j0])
            with cgutils.for_range(builder, k_in) as loop:
                k = loop.index
                w_row = builder.gep(w_base, [builder.mul(k, ldw)])
                w_vecs = [builder.load(builder.bitcast(builder.gep(w_row, [_I64(v * LANES)]), vptr),
                                       align=4) for v in range(vectors)]
                for a in range(rows):
                    s = builder.load(builder.gep(x_rows[a], [k]))
                    b = builder.shuffle_vector(builder.insert_element(undef, s, _I32(0)), undef, splat)
                    for v in range(vectors):
                        acc = builder.load(accs[a][v])
                        builder.store(builder.call(fma, [b, w_vecs[v], acc]), accs[a][v])

            b_row = builder.gep(ba.data, [j0])
            for v in range(vectors):
                bias_v = builder.load(builder.bitcast(builder.gep(b_row, [_I64(v * LANES)]), vptr),
                                      align=4)
                for a in range(rows):
                    r = builder.fadd(builder.load(accs[a][v]), bias_v)
                    r = builder.select(relu, builder.select(builder.fcmp_ordered(">", r, zero), r, zero), r)
                    y_row = builder.gep(ya.data, [builder.add(builder.mul(builder.add(a0, _I64(a)), ldy), j0)])
                    builder.store(r, builder.bitcast(builder.gep(y_row, [_I64(v * LANES)]), vptr), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def make_sparse_row(vectors: int):
    """An intrinsic ``row(idx, vals, m, w, j0, bias, y, a, relu)`` computing
    ``y[a, j0:j0+16*vectors] = act(sum over q < m of vals[q] * w[idx[q], j0:...] + bias[j0:...])``.

    The pruned form for one ad: ``idx``/``vals`` list only the inputs ReLU left non-zero, so a
    pruned input never touches its weight row, and the whole output block (up to 256 neurons in
    16 vectors) stays in registers until the end."""

    @intrinsic
    def row(typingctx, idx, vals, m, w, j0, bias, y, a, relu):
        if not (isinstance(idx, types.Array) and idx.ndim == 1 and idx.layout == "C"
                and idx.dtype == types.int64 and _is_c_matrix(vals, 1) and _is_c_matrix(w, 2)
                and _is_c_matrix(y, 2) and _is_c_matrix(bias, 1)):
            return None
        sig = types.void(idx, vals, m, w, j0, bias, y, a, relu)

        def codegen(context, builder, signature, args):
            i_v, v_v, m_v, w_v, j0_v, b_v, y_v, a_v, relu_v = args
            i_t, v_t, m_t, w_t, j0_t, b_t, y_t, a_t, relu_t = signature.args
            ia = context.make_array(i_t)(context, builder, i_v)
            va = context.make_array(v_t)(context, builder, v_v)
            wa = context.make_array(w_t)(context, builder, w_v)
            ba = context.make_array(b_t)(context, builder, b_v)
            ya = context.make_array(y_t)(context, builder, y_v)
            four = _I64(4)
            ldw = builder.sdiv(cgutils.unpack_tuple(builder, wa.strides, 2)[0], four)
            ldy = builder.sdiv(cgutils.unpack_tuple(builder, ya.strides, 2)[0], four)
            m = context.cast(builder, m_v, m_t, types.int64)
            j0 = context.cast(builder, j0_v, j0_t, types.int64)
            a = context.cast(builder, a_v, a_t, types.int64)
            relu = builder.icmp_signed("!=", context.cast(builder, relu_v, relu_t, types.int64), _I64(0))
            vptr = _VEC.as_pointer()
            zero = ir.Constant(_VEC, [0.0] * LANES)
            undef = ir.Constant(_VEC, ir.Undefined)
            splat = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), "llvm.fma.v16f32")
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
            w_base = builder.gep(wa.data, [j0])
            with cgutils.for_range(builder, m) as loop:
                q = loop.index
                k = builder.load(builder.gep(ia.data, [q]))
                s = builder.load(builder.gep(va.data, [q]))
                b = builder.shuffle_vector(builder.insert_element(undef, s, _I32(0)), undef, splat)
                w_row = builder.gep(w_base, [builder.mul(k, ldw)])
                for v in range(vectors):
                    wv = builder.load(builder.bitcast(builder.gep(w_row, [_I64(v * LANES)]), vptr), align=4)
                    builder.store(builder.call(fma, [b, wv, builder.load(accs[v])]), accs[v])
            b_row = builder.gep(ba.data, [j0])
            y_row = builder.gep(ya.data, [builder.add(builder.mul(a, ldy), j0)])
            for v in range(vectors):
                bias_v = builder.load(builder.bitcast(builder.gep(b_row, [_I64(v * LANES)]), vptr), align=4)
                r = builder.fadd(builder.load(accs[v]), bias_v)
                r = builder.select(relu, builder.select(builder.fcmp_ordered(">", r, zero), r, zero), r)
                builder.store(r, builder.bitcast(builder.gep(y_row, [_I64(v * LANES)]), vptr), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return row


_I8P = ir.IntType(8).as_pointer()


@intrinsic
def prefetch_row(typingctx, table, row):
    """Hint the CPU to fetch the first two cache lines of ``table[row]`` (a gather that will
    miss: embedding rows are scattered over tables of hundreds of MB)."""
    if not (isinstance(table, types.Array) and table.ndim == 2 and table.layout == "C"):
        return None
    sig = types.void(table, row)

    def codegen(context, builder, signature, args):
        t_t, r_t = signature.args
        arr = context.make_array(t_t)(context, builder, args[0])
        r = context.cast(builder, args[1], r_t, types.int64)
        stride = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
        base = builder.ptrtoint(arr.data, _I64)
        addr = builder.add(base, builder.mul(r, stride))
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_I8P, _I32, _I32, _I32]), "llvm.prefetch.p0")
        for offset in (0, 64):
            ptr = builder.inttoptr(builder.add(addr, _I64(offset)), _I8P)
            builder.call(fn, [ptr, _I32(0), _I32(3), _I32(1)])
        return context.get_dummy_value()

    return sig, codegen
