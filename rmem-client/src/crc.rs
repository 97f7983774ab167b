//! CRC32C (Castagnoli) of bulk data, folded with carry-less multiplication where the CPU has
//! AVX-512 VPCLMULQDQ, and the `crc32c` crate (the SSE4.2 `crc32` instruction) elsewhere.
//!
//! Every shard is checksummed once on each side of the wire, and that pass is a large part of
//! what a pool write costs beyond the raw TCP transfer. The `crc32` instruction computes 8 bytes
//! per cycle at best (three interleaved streams), about 30 GB/s here on cached data; folding
//! 256 bytes per step with `vpclmulqdq` is several times faster, so the checksum of a piece that
//! was just copied or received costs a fraction of the copy itself.
//!
//! # Safety
//! The only unsafe code is the SIMD kernel [`fold_avx512`], compiled with its target features
//! enabled and called only after `is_x86_feature_detected!` confirmed every one of them at run
//! time. It reads its input only through unaligned loads inside the slice's bounds.
#![allow(unsafe_code)]

/// Data shorter than this goes to the `crc32c` crate: folding has a fixed cost (the final
/// reduction of sixteen 128-bit lanes) that only pays on longer runs.
const FOLD_MIN: usize = 1024;

/// CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// CRC32C of `a || data` given `crc = crc32c(a)` (same convention as `crc32c::crc32c_append`).
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= FOLD_MIN && has_fold() {
        let blocks = data.len() / BLOCK * BLOCK;
        // SAFETY: `has_fold` checked at run time that the CPU supports every target feature
        // `fold_avx512` is compiled with; `blocks` is a non-zero multiple of BLOCK (len >=
        // FOLD_MIN > BLOCK) within `data`.
        let raw = unsafe { fold_avx512(!crc, &data[..blocks]) };
        return crc32c::crc32c_append(!raw, &data[blocks..]);
    }
    crc32c::crc32c_append(crc, data)
}

/// Bytes folded per loop step: four 512-bit registers.
#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 256;

#[cfg(target_arch = "x86_64")]
fn has_fold() -> bool {
    // std caches the CPUID results: each check is a load and a bit test.
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("vpclmulqdq")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
        && std::arch::is_x86_feature_detected!("sse4.2")
}

/// x^e modulo the CRC32C polynomial, bit-reflected (bit 31 is x^0), as `proto` represents it.
const fn xpow_mod_p(e: u32) -> u32 {
    let mut p = 1u32 << 31;
    let mut k = 0;
    while k < 32 {
        if e & (1 << k) != 0 {
            p = crate::proto::mult_mod_p(crate::proto::X2N[k], p);
        }
        k += 1;
    }
    p
}

/// Folding constant for moving a 64-bit half of a 128-bit lane forward: `clmul` of two
/// reflected 64-bit operands yields their product times x, so the constant is x^(e-1); a
/// polynomial of degree < 32 sits in the high half of the reflected 64-bit operand.
const fn k(e: u32) -> u64 {
    (xpow_mod_p(e - 1) as u64) << 32
}

/// Raw CRC32C register (no pre- or post-inversion) after `data`, starting from `state`.
///
/// Model: a 128-bit lane loaded little-endian holds message bits in reflected order, its low
/// qword being the higher-degree half. Folding lane `L = hi·x^64 + lo` (`hi` = low qword) forward
/// by `d` bits is `hi·x^(d+64) + lo·x^d`, reduced to 128 bits by multiplying with constants
/// x^(d+64) mod P and x^d mod P. Sixteen lanes (four registers) advance by 2048 bits per step;
/// at the end each lane is folded to the last lane's position and the resulting 128 bits are
/// reduced with two `crc32` instructions (which compute `(state·x^64 + data·x^32) mod P`).
///
/// # Safety
/// The CPU must support avx512f, vpclmulqdq, pclmulqdq and sse4.2. `data.len()` must be a
/// non-zero multiple of [`BLOCK`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.2")]
unsafe fn fold_avx512(state: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::*;

    debug_assert!(!data.is_empty() && data.len().is_multiple_of(BLOCK));
    let load = |off: usize| {
        debug_assert!(off + 64 <= data.len());
        // SAFETY: off + 64 <= data.len() for every call below (offsets within whole blocks);
        // the load is unaligned.
        unsafe { _mm512_loadu_si512(data.as_ptr().add(off).cast()) }
    };
    // The initial register value is the message's first 32 bits XORed with it.
    let mut x0 = _mm512_xor_si512(
        load(0),
        _mm512_zextsi128_si512(_mm_cvtsi32_si128(state as i32)),
    );
    let mut x1 = load(64);
    let mut x2 = load(128);
    let mut x3 = load(192);
    // Per 128-bit lane: low qword multiplied by x^(2048+64), high qword by x^2048.
    let step = _mm512_broadcast_i32x4(_mm_set_epi64x(
        k(8 * BLOCK as u32) as i64,
        k(8 * BLOCK as u32 + 64) as i64,
    ));
    let fold = |x: __m512i, next: __m512i| {
        let lo = _mm512_clmulepi64_epi128(x, step, 0x00);
        let hi = _mm512_clmulepi64_epi128(x, step, 0x11);
        _mm512_ternarylogic_epi64(lo, hi, next, 0x96)
    };
    let mut off = BLOCK;
    while off < data.len() {
        x0 = fold(x0, load(off));
        x1 = fold(x1, load(off + 64));
        x2 = fold(x2, load(off + 128));
        x3 = fold(x3, load(off + 192));
        off += BLOCK;
    }
    // Sixteen lanes in message order; fold lane i forward by 128 * (15 - i) bits onto the last.
    let lanes: [__m128i; 16] = [
        _mm512_extracti32x4_epi32(x0, 0),
        _mm512_extracti32x4_epi32(x0, 1),
        _mm512_extracti32x4_epi32(x0, 2),
        _mm512_extracti32x4_epi32(x0, 3),
        _mm512_extracti32x4_epi32(x1, 0),
        _mm512_extracti32x4_epi32(x1, 1),
        _mm512_extracti32x4_epi32(x1, 2),
        _mm512_extracti32x4_epi32(x1, 3),
        _mm512_extracti32x4_epi32(x2, 0),
        _mm512_extracti32x4_epi32(x2, 1),
        _mm512_extracti32x4_epi32(x2, 2),
        _mm512_extracti32x4_epi32(x2, 3),
        _mm512_extracti32x4_epi32(x3, 0),
        _mm512_extracti32x4_epi32(x3, 1),
        _mm512_extracti32x4_epi32(x3, 2),
        _mm512_extracti32x4_epi32(x3, 3),
    ];
    let mut acc = lanes[15];
    for (i, &l) in lanes[..15].iter().enumerate() {
        let kk = &TAIL_K[i];
        let c = _mm_set_epi64x(kk[1] as i64, kk[0] as i64);
        let lo = _mm_clmulepi64_si128(l, c, 0x00);
        let hi = _mm_clmulepi64_si128(l, c, 0x11);
        acc = _mm_xor_si128(acc, _mm_xor_si128(lo, hi));
    }
    let a = _mm_cvtsi128_si64(acc) as u64;
    let b = _mm_extract_epi64(acc, 1) as u64;
    _mm_crc32_u64(_mm_crc32_u64(0, a), b) as u32
}

/// For lane i of 16: constants folding it forward by 128 * (15 - i) bits (low qword, high qword).
#[cfg(target_arch = "x86_64")]
const TAIL_K: [[u64; 2]; 15] = {
    let mut t = [[0u64; 2]; 15];
    let mut i = 0;
    while i < 15 {
        let d = 128 * (15 - i) as u32;
        t[i] = [k(d + 64), k(d)];
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_crc32c_crate() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let data: Vec<u8> = (0..70_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let lens = [
            0, 1, 255, 256, 1023, 1024, 1025, 1280, 4096, 4099, 65536, 69_999,
        ];
        for &len in &lens {
            for start in [0, 1, 7, 64] {
                let d = &data[start..start + len.min(data.len() - start)];
                assert_eq!(
                    crc32c(d),
                    crc32c::crc32c(d),
                    "len {} start {start}",
                    d.len()
                );
                for init in [0, 1, 0xDEAD_BEEF] {
                    assert_eq!(
                        crc32c_append(init, d),
                        crc32c::crc32c_append(init, d),
                        "len {} start {start} init {init:#x}",
                        d.len()
                    );
                }
            }
        }
        // Appending piece by piece equals the whole.
        let mut c = 0;
        for p in data.chunks(3000) {
            c = crc32c_append(c, p);
        }
        assert_eq!(c, crc32c::crc32c(&data));
    }
}
