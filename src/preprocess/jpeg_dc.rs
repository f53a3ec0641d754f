//! Low-frequency DCT coefficients of a JPEG, for the DCT-domain resize of big images
//! ([`super::dct_resize`]).
//!
//! For each 8×8 block only the first [`NZ`] zigzag coefficients are kept. In a progressive JPEG
//! the DC coefficients sit in their own scans, and libjpeg's script sends luma AC 1-5 in a small
//! scan of its own; the large AC scans (luma AC 6-63 and every refinement) are skipped without
//! Huffman decoding. A baseline JPEG must be Huffman-decoded whole, but the inverse DCT,
//! upsampling and colour conversion of every pixel are saved.
//!
//! Anything unusual (arithmetic coding, CMYK, sampling factors other than 1 and 2, 12-bit
//! samples, a decoding error) returns `None` and the caller falls back to the full decoder.

use image::metadata::Orientation;

/// Eligible frame: Huffman-coded (baseline or progressive), 8-bit, 1 or 3 components, sampling
/// ratios 1 or 2.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub width: u32,
    pub height: u32,
    /// Progressive (SOF2) rather than baseline/extended sequential Huffman (SOF0/SOF1).
    pub progressive: bool,
    pub comps: Vec<Comp>,
    pub hmax: usize,
    pub vmax: usize,
    mcux: usize,
    mcuy: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Comp {
    pub id: u8,
    pub h: usize,
    pub v: usize,
    tq: usize,
    /// Blocks per row / column of the padded (MCU-aligned) grid.
    pub bw: usize,
    pub bh: usize,
    /// Blocks that cover the component's real samples.
    real_bw: usize,
    real_bh: usize,
}

/// Zigzag coefficients kept per block: DC and the five lowest AC terms, i.e. the (u, v)
/// frequencies with u + v <= 2. libjpeg's progressive script sends exactly these for luma in its
/// first two scans (DC, then AC 1-5), so no large AC scan has to be Huffman-decoded.
pub(crate) const NZ: usize = 6;

/// (horizontal u, vertical v) frequency of zigzag coefficient `z` < [`NZ`].
pub(crate) const ZZ_UV: [(usize, usize); NZ] = [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1), (2, 0)];

/// Frequencies per axis the kept coefficients span (max u + 1).
pub(crate) const KU: usize = 3;

/// The low-frequency DCT coefficients of a JPEG, before orientation.
pub(crate) struct DctImage {
    pub frame: Frame,
    /// Per component, [`NZ`] coefficients per block (row-major on the padded block grid), in
    /// half quantiser units (`2·value`, so the middle of a successive-approximation interval is
    /// representable); coefficients of scans that were not decoded are 0.
    pub blocks: Vec<Vec<i32>>,
    /// Per component, the dequantisation factor of each kept coefficient (quantiser / 2).
    pub deq: Vec<[f32; NZ]>,
    /// Adobe APP14 colour transform flag, if present.
    pub adobe: Option<u8>,
    pub orientation: Orientation,
}

fn be16(b: &[u8], i: usize) -> Option<usize> {
    Some(usize::from(*b.get(i)?) << 8 | usize::from(*b.get(i + 1)?))
}

/// Parse the frame header of a JPEG if it is one whose coefficients we can decode here.
pub(crate) fn probe(b: &[u8]) -> Option<Frame> {
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let m = b[i + 1];
        if m == 0xFF {
            i += 1;
            continue;
        }
        let len = be16(b, i + 2)?;
        let seg = b.get(i + 4..i + 2 + len)?;
        match m {
            0xC2 => return parse_sof(seg, true),
            0xC0 | 0xC1 => return parse_sof(seg, false),
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return None,
            0xDA | 0xD9 => return None,
            _ => {}
        }
        i += 2 + len;
    }
    None
}

pub(crate) fn parse_sof(seg: &[u8], progressive: bool) -> Option<Frame> {
    if seg.len() < 6 || seg[0] != 8 {
        return None;
    }
    let height = u32::from(seg[1]) << 8 | u32::from(seg[2]);
    let width = u32::from(seg[3]) << 8 | u32::from(seg[4]);
    let n = usize::from(seg[5]);
    if width == 0 || height == 0 || !(n == 1 || n == 3) || seg.len() < 6 + 3 * n {
        return None;
    }
    let mut comps = Vec::with_capacity(n);
    for c in 0..n {
        let o = 6 + 3 * c;
        let h = usize::from(seg[o + 1] >> 4);
        let v = usize::from(seg[o + 1] & 15);
        let tq = usize::from(seg[o + 2]);
        if !(1..=2).contains(&h) || !(1..=2).contains(&v) || tq > 3 {
            return None;
        }
        comps.push(Comp {
            id: seg[o],
            h,
            v,
            tq,
            bw: 0,
            bh: 0,
            real_bw: 0,
            real_bh: 0,
        });
    }
    if n == 1 {
        comps[0].h = 1;
        comps[0].v = 1;
    }
    let hmax = comps.iter().map(|c| c.h).max()?;
    let vmax = comps.iter().map(|c| c.v).max()?;
    let (w, h) = (width as usize, height as usize);
    let mcux = w.div_ceil(8 * hmax);
    let mcuy = h.div_ceil(8 * vmax);
    for c in &mut comps {
        c.bw = mcux * c.h;
        c.bh = mcuy * c.v;
        c.real_bw = (w * c.h).div_ceil(hmax).div_ceil(8);
        c.real_bh = (h * c.v).div_ceil(vmax).div_ceil(8);
    }
    Some(Frame {
        width,
        height,
        progressive,
        comps,
        hmax,
        vmax,
        mcux,
        mcuy,
    })
}

/// Canonical Huffman decoder with a 9-bit fast lookup.
struct Huff {
    look: Vec<(u8, u8)>,
    /// AC symbol and its value bits in one lookup, when both fit in `LOOK_BITS`:
    /// `value << 16 | run << 8 | bits consumed`, or `FAST_NO_VALUE | run << 8 | bits` for the
    /// symbols without a value (EOB, ZRL); 0 = not in the table (long codes).
    fast_ac: Vec<u32>,
    maxcode: [i32; 18],
    valptr: [i32; 17],
    mincode: [i32; 17],
    vals: Vec<u8>,
}

const LOOK_BITS: u32 = 12;

/// Flag of a [`Huff::fast_ac`] entry for a symbol with size 0 (EOB, ZRL).
const FAST_NO_VALUE: u32 = 0x8000;

impl Huff {
    fn new(counts: &[u8], vals: &[u8]) -> Option<Huff> {
        let mut look = vec![(0u8, 0u8); 1 << LOOK_BITS];
        let mut maxcode = [-1i32; 18];
        let mut valptr = [0i32; 17];
        let mut mincode = [0i32; 17];
        let mut code = 0i32;
        let mut k = 0usize;
        for l in 1..=16usize {
            let n = usize::from(counts[l - 1]);
            valptr[l] = k as i32;
            mincode[l] = code;
            for _ in 0..n {
                let sym = *vals.get(k)?;
                if l as u32 <= LOOK_BITS {
                    let shift = LOOK_BITS - l as u32;
                    let base = (code as usize) << shift;
                    for e in look.get_mut(base..base + (1 << shift))? {
                        *e = (l as u8, sym);
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[l] = code - 1;
            }
            if code > (1 << l) {
                return None;
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        let fast_ac = look
            .iter()
            .enumerate()
            .map(|(idx, &(l, sym))| {
                let (l, r, s) = (u32::from(l), u32::from(sym >> 4), u32::from(sym & 15));
                if l == 0 || l + s > LOOK_BITS {
                    return 0;
                }
                if s == 0 {
                    return FAST_NO_VALUE | r << 8 | l;
                }
                let v = (idx as u32 >> (LOOK_BITS - l - s)) & ((1 << s) - 1);
                let v = extend(v, s) as i16 as u16 as u32;
                v << 16 | r << 8 | (l + s)
            })
            .collect();
        Some(Huff {
            look,
            fast_ac,
            maxcode,
            valptr,
            mincode,
            vals: vals.to_vec(),
        })
    }
}

/// MSB-first bit reader over entropy-coded data; stops (feeding zeros) at a marker.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    nbits: u32,
    marker: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Bits {
            data,
            pos,
            acc: 0,
            nbits: 0,
            marker: false,
        }
    }

    #[inline]
    fn fill(&mut self) {
        // Fast path: the next 8 bytes hold no 0xFF (no stuffing, no marker): take whole bytes.
        if !self.marker && self.nbits <= 56 {
            if let Some(b8) = self.data.get(self.pos..self.pos + 8) {
                let mut a = [0u8; 8];
                a.copy_from_slice(b8);
                let chunk = u64::from_be_bytes(a);
                let x = !chunk;
                let has_ff = x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080;
                if has_ff == 0 {
                    let nb = (64 - self.nbits) / 8;
                    let v = if nb >= 8 {
                        chunk
                    } else {
                        chunk >> (64 - 8 * nb)
                    };
                    let shift = 64 - self.nbits - 8 * nb;
                    self.acc |= if shift >= 64 { 0 } else { v << shift };
                    self.pos += nb as usize;
                    self.nbits += 8 * nb;
                    return;
                }
            }
        }
        while self.nbits <= 56 {
            let mut byte = 0u8;
            if !self.marker {
                match self.data.get(self.pos) {
                    None => self.marker = true,
                    Some(&0xFF) => {
                        if self.data.get(self.pos + 1) == Some(&0) {
                            byte = 0xFF;
                            self.pos += 2;
                        } else {
                            self.marker = true;
                        }
                    }
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                    }
                }
            }
            self.acc |= u64::from(byte) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    #[inline]
    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.nbits < n {
            self.fill();
        }
        let v = (self.acc >> (64 - n)) as u32;
        self.acc <<= n;
        self.nbits -= n;
        v
    }

    #[inline]
    fn decode(&mut self, h: &Huff) -> Option<u8> {
        if self.nbits < 16 {
            self.fill();
        }
        let (l, s) = h.look[(self.acc >> (64 - LOOK_BITS)) as usize];
        if l != 0 {
            self.acc <<= l;
            self.nbits -= u32::from(l);
            return Some(s);
        }
        for l in (LOOK_BITS as usize + 1)..=16 {
            let code = (self.acc >> (64 - l)) as i32;
            if code <= h.maxcode[l] {
                self.acc <<= l;
                self.nbits -= l as u32;
                let idx = h.valptr[l] + code - h.mincode[l];
                return h.vals.get(usize::try_from(idx).ok()?).copied();
            }
        }
        None
    }

    /// Restart: drop the padding bits, step over the RSTn marker.
    fn restart(&mut self) -> Option<()> {
        self.acc = 0;
        self.nbits = 0;
        if self.marker {
            match self.data.get(self.pos + 1) {
                Some(0xD0..=0xD7) => {
                    self.pos += 2;
                    self.marker = false;
                    Some(())
                }
                _ => None,
            }
        } else {
            // Padding ones before the marker, then the marker itself.
            while self.data.get(self.pos) == Some(&0xFF)
                && self.data.get(self.pos + 1) == Some(&0xFF)
            {
                self.pos += 1;
            }
            match (self.data.get(self.pos), self.data.get(self.pos + 1)) {
                (Some(0xFF), Some(0xD0..=0xD7)) => {
                    self.pos += 2;
                    Some(())
                }
                _ => None,
            }
        }
    }
}

#[inline]
fn extend(v: u32, s: u32) -> i32 {
    if s == 0 {
        0
    } else if v < (1 << (s - 1)) {
        v as i32 - (1 << s) + 1
    } else {
        v as i32
    }
}

/// Position of the next marker (not RSTn, not stuffed) at or after `j`.
fn next_marker(b: &[u8], mut j: usize) -> Option<usize> {
    loop {
        j = super::decode::find_ff(b, j)?;
        match b.get(j + 1)? {
            0x00 | 0xD0..=0xD7 => j += 2,
            0xFF => j += 1,
            _ => return Some(j),
        }
    }
}

/// Decode the low-frequency DCT coefficients ([`NZ`] per block) of a JPEG. Progressive files:
/// the DC scans (with refinements) and, when `ac`, the first AC scans that start below [`NZ`]
/// (refinement scans are not read: the unknown low bits are taken as the middle of their
/// interval); the other AC scans are skipped without decoding. Baseline files: every
/// coefficient must be Huffman-decoded, only the first [`NZ`] are kept. `None` when the file is
/// not eligible or anything is off (the caller then uses the full decoder).
pub(crate) fn decode(b: &[u8], frame: &Frame, ac: bool) -> Option<DctImage> {
    // Quantisation values of the first NZ zigzag coefficients, per table.
    let mut qt = [[0i32; NZ]; 4];
    let mut q_seen = [false; 4];
    let mut dc_tables: [Option<Huff>; 4] = [None, None, None, None];
    let mut ac_tables: [Option<Huff>; 4] = [None, None, None, None];
    let mut restart_interval = 0usize;
    let mut adobe: Option<u8> = None;
    let mut exif: Option<&[u8]> = None;
    let mut blocks: Vec<Vec<i32>> = frame
        .comps
        .iter()
        .map(|c| vec![0i32; c.bw * c.bh * NZ])
        .collect();
    let mut latched: Vec<Option<[i32; NZ]>> = vec![None; frame.comps.len()];
    let mut dc_scans = 0usize;

    let mut i = 2;
    loop {
        if b.get(i) != Some(&0xFF) {
            return None;
        }
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let m = *b.get(i)?;
        i += 1;
        if m == 0xD9 {
            break;
        }
        if matches!(m, 0x01 | 0xD0..=0xD7) {
            continue;
        }
        let len = be16(b, i)?;
        let seg = b.get(i + 2..i + len)?;
        let end = i + len;
        match m {
            0xDB => {
                let mut p = 0;
                while p < seg.len() {
                    let pq = seg[p] >> 4;
                    let tq = usize::from(seg[p] & 15);
                    if tq > 3 {
                        return None;
                    }
                    for (z, q) in qt[tq].iter_mut().enumerate() {
                        *q = if pq == 0 {
                            i32::from(*seg.get(p + 1 + z)?)
                        } else {
                            be16(seg, p + 1 + 2 * z)? as i32
                        };
                    }
                    q_seen[tq] = true;
                    p += 1 + if pq == 0 { 64 } else { 128 };
                }
            }
            0xC4 => {
                let mut p = 0;
                while p < seg.len() {
                    let tc = seg[p] >> 4;
                    let th = usize::from(seg[p] & 15);
                    let counts = seg.get(p + 1..p + 17)?;
                    let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    let vals = seg.get(p + 17..p + 17 + total)?;
                    if th > 3 {
                        return None;
                    }
                    if tc == 0 {
                        dc_tables[th] = Some(Huff::new(counts, vals)?);
                    } else if ac || !frame.progressive {
                        ac_tables[th] = Some(Huff::new(counts, vals)?);
                    }
                    p += 17 + total;
                }
            }
            0xDD => restart_interval = be16(seg, 0)?,
            0xEE if seg.starts_with(b"Adobe") && seg.len() >= 12 => adobe = Some(seg[11]),
            0xE1 if seg.starts_with(b"Exif\0\0") => exif = Some(&seg[6..]),
            0xDA => {
                let ns = usize::from(*seg.first()?);
                let mut scomps = Vec::with_capacity(ns);
                for k in 0..ns {
                    let id = *seg.get(1 + 2 * k)?;
                    let t = *seg.get(2 + 2 * k)?;
                    let ci = frame.comps.iter().position(|c| c.id == id)?;
                    scomps.push(ScanComp {
                        ci,
                        td: usize::from(t >> 4).min(3),
                        ta: usize::from(t & 15).min(3),
                    });
                }
                if scomps.is_empty() {
                    return None;
                }
                let ss = *seg.get(1 + 2 * ns)?;
                let se = *seg.get(2 + 2 * ns)?;
                let ahl = *seg.get(3 + 2 * ns)?;
                let (ah, al) = (u32::from(ahl >> 4), u32::from(ahl & 15));
                if ss == 0 {
                    for sc in &scomps {
                        if latched[sc.ci].is_none() {
                            let tq = frame.comps[sc.ci].tq;
                            if !q_seen[tq] {
                                return None;
                            }
                            latched[sc.ci] = Some(qt[tq]);
                        }
                    }
                }
                let mut bits = Bits::new(b, end);
                if !frame.progressive {
                    if ss != 0 || se != 63 || ahl != 0 {
                        return None;
                    }
                    seq_scan(
                        &mut bits,
                        frame,
                        &scomps,
                        &dc_tables,
                        &ac_tables,
                        &mut blocks,
                        restart_interval,
                    )?;
                    dc_scans += 1;
                    i = next_marker(b, bits.pos)?;
                } else if ss == 0 {
                    if al > 13 {
                        return None;
                    }
                    dc_scan(
                        &mut bits,
                        frame,
                        &scomps,
                        &dc_tables,
                        &mut blocks,
                        restart_interval,
                        ah,
                        al,
                    )?;
                    dc_scans += 1;
                    i = next_marker(b, bits.pos)?;
                } else if ac
                    && ah == 0
                    && usize::from(ss) < NZ
                    && se >= ss
                    && se <= 63
                    && al <= 13
                    && ns == 1
                {
                    // First AC scan holding some of the kept frequencies.
                    let sc = &scomps[0];
                    let table = ac_tables[sc.ta].as_ref()?;
                    ac_first_scan(
                        &mut bits,
                        &frame.comps[sc.ci],
                        table,
                        &mut blocks[sc.ci],
                        restart_interval,
                        ss,
                        se,
                        al,
                    )?;
                    i = next_marker(b, bits.pos)?;
                } else {
                    i = next_marker(b, end)?;
                }
                continue;
            }
            _ => {}
        }
        i = end;
    }
    if dc_scans == 0 {
        return None;
    }
    let deq = latched
        .iter()
        .map(|q| q.map(|q| q.map(|v| v as f32 / 2.0)))
        .collect::<Option<Vec<_>>>()?;
    let orientation = exif
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Some(DctImage {
        frame: frame.clone(),
        blocks,
        deq,
        adobe,
        orientation,
    })
}

/// A component of a scan: frame component index, DC and AC table numbers.
struct ScanComp {
    ci: usize,
    td: usize,
    ta: usize,
}

/// Calls `f(component index in the scan, frame component index, block index)` for every block
/// of a scan in coding order, handling restart intervals; stops at the first `None`.
fn for_each_block(
    bits: &mut Bits,
    frame: &Frame,
    scomps: &[ScanComp],
    restart_interval: usize,
    mut f: impl FnMut(&mut Bits, usize, usize, usize, bool) -> Option<()>,
) -> Option<()> {
    let mut mcu = 0usize;
    if scomps.len() == 1 {
        let ci = scomps[0].ci;
        let comp = &frame.comps[ci];
        for by in 0..comp.real_bh {
            for bx in 0..comp.real_bw {
                let restart =
                    restart_interval > 0 && mcu > 0 && mcu.is_multiple_of(restart_interval);
                if restart {
                    bits.restart()?;
                }
                f(bits, 0, ci, by * comp.bw + bx, restart)?;
                mcu += 1;
            }
        }
    } else {
        for my in 0..frame.mcuy {
            for mx in 0..frame.mcux {
                let mut restart =
                    restart_interval > 0 && mcu > 0 && mcu.is_multiple_of(restart_interval);
                if restart {
                    bits.restart()?;
                }
                for (k, sc) in scomps.iter().enumerate() {
                    let comp = &frame.comps[sc.ci];
                    for y in 0..comp.v {
                        for x in 0..comp.h {
                            let idx = (my * comp.v + y) * comp.bw + mx * comp.h + x;
                            f(bits, k, sc.ci, idx, restart)?;
                            restart = false;
                        }
                    }
                }
                mcu += 1;
            }
        }
    }
    Some(())
}

#[allow(clippy::too_many_arguments)]
fn dc_scan(
    bits: &mut Bits,
    frame: &Frame,
    scomps: &[ScanComp],
    tables: &[Option<Huff>; 4],
    blocks: &mut [Vec<i32>],
    restart_interval: usize,
    ah: u32,
    al: u32,
) -> Option<()> {
    let mut pred = [0i32; 4];
    let refine = ah != 0;
    let dc_tables: Vec<Option<&Huff>> = scomps.iter().map(|s| tables[s.td].as_ref()).collect();
    for_each_block(
        bits,
        frame,
        scomps,
        restart_interval,
        |bits, k, ci, idx, restart| {
            if restart {
                pred = [0; 4];
            }
            let c = blocks[ci].get_mut(idx * NZ)?;
            if refine {
                if bits.bits(1) != 0 {
                    *c |= 2 << al;
                }
            } else {
                let s = u32::from(bits.decode(dc_tables[k]?)?);
                if s > 15 {
                    return None;
                }
                let v = bits.bits(s);
                pred[k] = pred[k].wrapping_add(extend(v, s));
                // Half units; the low `al` bits are 0 until refinement scans set them.
                *c = pred[k].wrapping_shl(al + 1);
            }
            Some(())
        },
    )
}

/// Value in half units of a successive-approximation coefficient `v << al` whose low `al` bits
/// are unknown: the middle of the interval of magnitudes it stands for.
#[inline]
fn half_units(v: i32, al: u32) -> i32 {
    if v == 0 {
        return 0;
    }
    let mag = ((v.unsigned_abs() << al) << 1) + (1u32 << al) - 1;
    if v < 0 {
        -(mag as i32)
    } else {
        mag as i32
    }
}

/// A progressive first AC scan (`Ah = 0`) of one component; keeps zigzag coefficients < [`NZ`].
#[allow(clippy::too_many_arguments)]
fn ac_first_scan(
    bits: &mut Bits,
    comp: &Comp,
    table: &Huff,
    blocks: &mut [i32],
    restart_interval: usize,
    ss: u8,
    se: u8,
    al: u32,
) -> Option<()> {
    let (ss, se) = (usize::from(ss), usize::from(se));
    let mut eobrun = 0u32;
    let mut mcu = 0usize;
    for by in 0..comp.real_bh {
        for bx in 0..comp.real_bw {
            if restart_interval > 0 && mcu > 0 && mcu.is_multiple_of(restart_interval) {
                bits.restart()?;
                eobrun = 0;
            }
            mcu += 1;
            if eobrun > 0 {
                eobrun -= 1;
                continue;
            }
            let at = (by * comp.bw + bx) * NZ;
            let slot = blocks.get_mut(at..at + NZ)?;
            let mut k = ss;
            while k <= se {
                let rs = bits.decode(table)?;
                let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
                if s != 0 {
                    k += r;
                    if k > se {
                        return None;
                    }
                    let v = extend(bits.bits(s), s);
                    if k < NZ {
                        slot[k] = half_units(v, al);
                    }
                    k += 1;
                } else if r < 15 {
                    eobrun = (1u32 << r) - 1;
                    if r > 0 {
                        eobrun += bits.bits(r as u32);
                    }
                    break;
                } else {
                    k += 16;
                }
            }
        }
    }
    Some(())
}

/// A baseline (sequential) scan: every coefficient is decoded, the first [`NZ`] are kept.
fn seq_scan(
    bits: &mut Bits,
    frame: &Frame,
    scomps: &[ScanComp],
    dc_tables: &[Option<Huff>; 4],
    ac_tables: &[Option<Huff>; 4],
    blocks: &mut [Vec<i32>],
    restart_interval: usize,
) -> Option<()> {
    let mut pred = [0i32; 4];
    let tables: Vec<(&Huff, &Huff)> = scomps
        .iter()
        .map(|s| Some((dc_tables[s.td].as_ref()?, ac_tables[s.ta].as_ref()?)))
        .collect::<Option<_>>()?;
    for_each_block(
        bits,
        frame,
        scomps,
        restart_interval,
        |bits, k, ci, idx, restart| {
            if restart {
                pred = [0; 4];
            }
            let (dct, act) = tables[k];
            let at = idx * NZ;
            let slot = blocks[ci].get_mut(at..at + NZ)?;
            // The bit reader's state is kept in locals (registers) in this loop and handed back
            // around refills and the rare long codes.
            if bits.nbits < 32 {
                bits.fill();
            }
            let e = dct.fast_ac[(bits.acc >> (64 - LOOK_BITS)) as usize];
            let diff = if e != 0 && (e >> 8) & 0x7F == 0 {
                let n = e & 0xFF;
                bits.acc <<= n;
                bits.nbits -= n;
                if e & FAST_NO_VALUE != 0 {
                    0
                } else {
                    i32::from((e >> 16) as u16 as i16)
                }
            } else {
                let s = u32::from(bits.decode(dct)?);
                if s > 15 {
                    return None;
                }
                extend(bits.bits(s), s)
            };
            pred[k] = pred[k].wrapping_add(diff);
            slot[0] = pred[k].wrapping_shl(1);
            let (mut acc, mut nbits) = (bits.acc, bits.nbits);
            let mut z = 1usize;
            while z < 64 {
                if nbits < 16 {
                    (bits.acc, bits.nbits) = (acc, nbits);
                    bits.fill();
                    (acc, nbits) = (bits.acc, bits.nbits);
                }
                let e = act.fast_ac[(acc >> (64 - LOOK_BITS)) as usize];
                if e != 0 {
                    let n = e & 0xFF;
                    acc <<= n;
                    nbits -= n;
                    if e & FAST_NO_VALUE != 0 {
                        if (e >> 8) & 0x7F == 15 {
                            z += 16;
                            continue;
                        }
                        break;
                    }
                    z += ((e >> 8) & 0xFF) as usize;
                    if z > 63 {
                        return None;
                    }
                    if z < NZ {
                        slot[z] = i32::from((e >> 16) as u16 as i16) << 1;
                    }
                    z += 1;
                    continue;
                }
                (bits.acc, bits.nbits) = (acc, nbits);
                let rs = bits.decode(act)?;
                let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
                let v = extend(bits.bits(s), s);
                (acc, nbits) = (bits.acc, bits.nbits);
                if s != 0 {
                    z += r;
                    if z > 63 {
                        return None;
                    }
                    if z < NZ {
                        slot[z] = v << 1;
                    }
                    z += 1;
                } else if r == 15 {
                    z += 16;
                } else {
                    break;
                }
            }
            (bits.acc, bits.nbits) = (acc, nbits);
            Some(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/preprocess/dct")
            .join(name);
        std::fs::read(&p).unwrap()
    }

    #[test]
    fn eligibility_of_the_formats_fixtures() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/preprocess/formats");
        assert!(probe(&std::fs::read(p.join("cmyk.jpg")).unwrap()).is_none());
        for (f, progressive) in [
            ("baseline.jpg", false),
            ("baseline444.jpg", false),
            ("progressive.jpg", true),
        ] {
            let frame = probe(&std::fs::read(p.join(f)).unwrap()).unwrap();
            assert_eq!(frame.progressive, progressive, "{f}");
        }
    }

    #[test]
    fn corrupt_scan_data_gives_none_not_a_panic() {
        for name in ["prog420_rst.jpg", "base420.jpg", "base444_rst.jpg"] {
            let bytes = fixture(name);
            let frame = probe(&bytes).unwrap();
            assert!(decode(&bytes, &frame, true).is_some(), "{name}");
            for cut in (200..bytes.len()).step_by(97) {
                let mut m = bytes.clone();
                m[cut] ^= 0x5A;
                let _ = decode(&m, &frame, false);
                let _ = decode(&m, &frame, true);
                let _ = decode(&bytes[..cut], &frame, true);
            }
        }
    }
}
