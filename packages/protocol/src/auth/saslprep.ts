// SASLprep (RFC 4013) exactly as PostgreSQL applies it to SCRAM passwords (src/common/saslprep.c),
// including its quirks, so that a secret we derive matches the one PostgreSQL stores:
//   - a pure-ASCII password is used as is (even with control characters);
//   - the prohibited-output, unassigned and bidi checks look at the *mapped* code points, before
//     NFKC normalisation;
//   - when the password is not valid SASLprep input (prohibited or unassigned code point, bad
//     bidi, empty after mapping), the raw password is used instead of failing.
// NFKC comes from the runtime's ICU (a newer Unicode than PostgreSQL's tables; they differ only
// for code points PostgreSQL treats as unassigned, which take the raw path anyway).
//
// The tables are RFC 3454's, taken from Unicode 3.2 data (CPython's `stringprep` module:
// PROHIBITED = A.1 ∪ C.1.2 ∪ C.2.1 ∪ C.2.2 ∪ C.3 … C.9, RAND_AL_CAT = D.1, L_CAT = D.2).
// Each is a list of inclusive ranges, written as "gap.len" pairs in base 36: start = previous
// end + 1 + gap, end = start + len.

function decodeRanges(packed: string): Uint32Array {
  const pairs = packed.split(' ').filter((p) => p !== '')
  const out = new Uint32Array(pairs.length * 2)
  let next = 0
  pairs.forEach((pair, i) => {
    const [gap, len] = pair.split('.')
    const start = next + Number.parseInt(gap!, 36)
    const end = start + Number.parseInt(len!, 36)
    out[2 * i] = start
    out[2 * i + 1] = end
    next = end + 1
  })
  return out
}

function inRanges(table: Uint32Array, cp: number): boolean {
  let lo = 0
  let hi = table.length / 2 - 1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    if (cp < table[2 * mid]!) hi = mid - 1
    else if (cp > table[2 * mid + 1]!) lo = mid + 1
    else return true
  }
  return false
}

// C.1.2: non-ASCII spaces, mapped to U+0020 (takes precedence over B.1 for U+200B, as in PG).
const NON_ASCII_SPACE = decodeRanges('4g.0 4bj.0 1vj.b z.0 1b.0 334.0')
// B.1: commonly mapped to nothing.
const MAPPED_TO_NOTHING = decodeRanges('4t.0 ip.0 43a.0 4.2 1kt.2 2a.0 17rz.f 6n.0')

const PROHIBITED = decodeRanges(
  '0.v 2n.x ao.0 i.r 2m.1 1r.g 1s.1 e.f g.3 2.3 1.2 1.4 7.0 1.0 k.0 18.0 13.8 3r.0 1z.0 ' +
    '12.1 2.5 g.w 12.1 7.0 13.0 2.5 h.0 n.0 a.a r.4 5.m 1.d 1.2 1.0 q.4 m.9 3h.0 g.1 f.0 e.1 ' +
    't.2 r.1g 1e.9a 3.0 1h.1 i.1 5.2 p.f 3.0 8.1 2.1 m.0 7.0 1.2 4.1 1.0 7.1 2.1 3.8 1.3 2.0 ' +
    '5.1 l.6 1.1 6.3 2.1 m.0 7.0 2.0 2.0 2.1 1.0 5.3 2.1 3.a 4.0 1.6 f.b 3.0 7.0 1.0 3.0 m.0 ' +
    '7.0 2.0 5.1 a.0 3.0 3.1 1.e 1.4 a.g 3.0 8.1 2.1 m.0 7.0 2.1 4.1 8.2 2.1 3.7 2.3 2.0 3.3 ' +
    'b.g 2.0 6.2 3.0 4.2 2.0 1.0 2.2 2.2 3.2 8.0 3.3 5.2 3.0 4.8 1.e c.d 3.0 8.0 3.0 n.0 a.0 ' +
    '5.3 7.0 3.0 4.6 2.8 2.3 a.h 2.0 8.0 3.0 n.0 a.0 5.3 7.0 3.0 4.6 2.6 1.0 2.3 a.h 2.0 8.0 ' +
    '3.0 n.0 g.3 6.1 3.0 4.8 1.7 2.3 a.h 2.0 i.2 o.0 9.0 1.1 7.2 1.3 6.0 1.0 8.h 3.b 1m.3 ' +
    't.10 2.0 1.1 2.0 1.1 1.5 4.0 7.0 3.0 1.0 1.1 2.0 d.0 3.1 5.0 1.0 6.1 a.1 2.x 20.0 y.5 ' +
    'r.3 8.0 10.0 f.1 1.1b y.0 5.0 2.0 7.2 4.5 q.1x 12.9 15.1 1.3 2i.4 1w.4 2a.5 7.0 1r.0 1.0 ' +
    '4.1 7.0 1.0 4.1 13.0 1.0 4.1 v.0 1.0 4.1 7.0 1.0 4.1 7.0 7.0 n.0 v.0 1.0 4.1 7.0 13.0 ' +
    'j.5 s.y 2d.b hi.9 s.2 29.e d.0 7.a n.8 k.b d.0 3.0 2.b 2l.2 a.l e.1 a.5 2g.7 16.11x 4c.3 ' +
    '2i.5 m.1 6.1 12.1 6.1 8.0 1.0 1.0 1.0 v.1 1h.0 f.0 e.1 6.0 j.1 3.0 9.g o.7 z.3 1.n 2.1 ' +
    'r.g i.t r.k 1n.1 f.6 1d.b fz.1c 13.o b.k 4f.0 7o.1 2.0 2t.1 a.3a 4.0 4.1 s.0 z.0 1.0 4.2 ' +
    '1.0 7.1 1g.2 o.0 e.g s.3 ls.ov q.0 2h.b 5y.16 1r.0 2e.1 2v.4 14.3 2m.0 14.1j 19.2 10.c ' +
    '17.2 25.3 1b.0 3b.3 2r.1 v.0 52u.21 g4m.2h wd.2 1j.1fc 8mc.6l7 8e.1 1n.44 7.b 5.4 q.0 ' +
    '5.0 1.0 2.0 2.0 30.w a5.f 1s.1 1i.13 d.2 g.f 4.b n.1 a.0 j.0 4.3 5.0 3r.3 5a.2 6.1 6.1 ' +
    '6.1 3.2 7.0 7.ls v.0 4.b r.50 12.1 12.148h 6u.9 13.2 21.7 2r.f5 2d.0 1z.0 2.1 1.1 2.1 ' +
    '4.0 c.0 1.0 4.0 2.0 1t.0 4.1 8.0 7.0 s.0 4.0 5.0 1.2 7.0 9e.3 82.3 1e.7wf wyf.g14 ' +
    'f2.jp41 ',
)

const RAND_AL_CAT = decodeRanges(
  '14u.0 1.0 2.0 c.q 5.4 12.0 3.0 1.p 5.a y.2 1.2s 7.0 7.1 j.4 1.d 2.0 1.q 2b.11 b.0 4t9.0 ' +
    '179p.0 1.9 1.c 1.4 1.0 1.1 1.1 1.2z x.a2 i.1r 2.1h 14.c 37.4 1.3q ',
)

const L_CAT = decodeRanges(
  '1t.p 6.p 1b.0 a.0 4.0 5.m 1.u 1.88 1.h s.2l 2.8 2.6 e.1 e.4 9.0 3v.0 b.0 1.2 1.0 1.j ' +
    '1.17 1.11 a.3m 7.1w 1.11 2.1 6.f x.11 2.6 1.12 1.0 op.0 1.1g 3.3 8.3 3.0 7.9 2.c h.1 1.7 ' +
    '2.1 2.l 1.6 1.0 3.3 4.2 6.1 2.1 a.0 4.1 1.2 4.b 2.6 a.5 4.1 2.l 1.6 1.1 1.1 1.1 4.2 o.3 ' +
    '1.0 7.9 2.2 e.0 1.6 1.0 1.2 1.l 1.6 1.1 1.4 3.3 8.0 1.1 3.0 f.0 5.9 i.1 1.7 2.1 2.l 1.6 ' +
    '1.1 2.3 3.1 1.0 6.1 2.1 a.0 4.1 1.2 4.a i.0 1.5 3.2 1.3 3.1 1.0 1.1 3.1 3.2 3.7 1.2 4.1 ' +
    '1.1 3.2 1.2 a.0 f.b e.2 1.7 1.2 1.m 1.9 1.4 7.3 r.1 4.9 i.1 1.7 1.2 1.m 1.9 1.4 4.0 1.4 ' +
    '2.1 1.1 9.1 7.0 1.1 4.9 i.1 1.7 1.2 1.m 1.f 4.2 5.2 1.2 a.0 8.1 4.9 i.1 1.h 3.n 1.8 1.0 ' +
    '2.6 8.2 6.7 i.2 c.1b 1.1 c.6 8.c 11.1 1.0 2.1 1.0 2.0 6.3 1.6 1.2 1.0 1.0 2.1 1.3 1.1 ' +
    '9.0 2.4 1.0 9.9 2.1 y.n 2.q 1.0 1.0 5.9 1.x k.0 5.0 2.3 1e.7 1.5 2.0 1c.x 1.4 1.1 1.0 ' +
    '4.0 6.0 7.n 20.11 a.14 2.0 4.2h 5.1v 5.29 6.6 1.1q 1.0 1.3 2.6 1.0 1.3 2.12 1.0 1.3 2.u ' +
    '1.0 1.3 2.6 1.0 1.3 2.6 1.6 1.m 1.u 1.0 1.3 2.6 1.12 1.i 6.r z.2c c.hh a.p 5.28 f.c 1.3 ' +
    'e.h 3.1 9.h e.c 1.2 f.1i 7.7 1.1 b.6 1.0 3.9 12.9 6.2f 8.14 11z.4b 4.2h 6.l 2.5 2.11 2.5 ' +
    '2.7 1.0 1.0 1.0 1.u 2.1g 1.6 1.0 3.2 1.6 3.3 2.5 4.c 5.2 1.6 h.0 2q.0 d.0 3m.0 4.0 2.9 ' +
    '1.0 3.4 6.0 1.0 1.0 1.3 1.2 1.6 3.2 5.4 m.z c2.1w q.0 7a.25 26z.2 p.8 7.4 2.4 4.2d 6.2 ' +
    '1.2h 1.3 5.13 4.2l 1.13 1k.18 3.z s.r 3.1d f.b 4.1a 1.3a 4.2q 2.u 1.52t 22.g4l 2i.wc ' +
    '1gz.8mb 1ng.565 2.1m 45.6 c.4 sp.p 6.p b.2g 3.5 2.5 2.5 2.2 mb.u 1.3 c.q 51.11 2.11 ' +
    '148i.6t a.12 3.1o 3.8 g.1 7.t 4.1b f6.2c 1.1y 1.1 2.0 2.1 2.3 1.b 1.0 1.3 1.1 1.1s 1.3 ' +
    '2.7 1.6 1.r 1.3 1.4 1.0 3.6 1.9d 4.81 7xy.wye g15.f1 gvz6.1ekd 2.1ekd ',
)

// biome-ignore lint/suspicious/noControlCharactersInRegex: the ASCII range is the point
const ASCII_ONLY = /^[\x00-\x7f]*$/

export function saslprep(password: string): string {
  if (ASCII_ONLY.test(password)) return password
  const mapped: number[] = []
  for (const ch of password) {
    const cp = ch.codePointAt(0)!
    if (inRanges(NON_ASCII_SPACE, cp)) mapped.push(0x20)
    else if (!inRanges(MAPPED_TO_NOTHING, cp)) mapped.push(cp)
  }
  if (mapped.length === 0) return password
  for (const cp of mapped) if (inRanges(PROHIBITED, cp)) return password
  if (mapped.some((cp) => inRanges(RAND_AL_CAT, cp))) {
    if (mapped.some((cp) => inRanges(L_CAT, cp))) return password
    if (!inRanges(RAND_AL_CAT, mapped[0]!) || !inRanges(RAND_AL_CAT, mapped.at(-1)!)) {
      return password
    }
  }
  return String.fromCodePoint(...mapped).normalize('NFKC')
}
