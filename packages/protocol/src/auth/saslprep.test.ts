import assert from 'node:assert/strict'
import { test } from 'node:test'
import { saslprep } from './saslprep.ts'

test('ASCII passwords pass untouched, control characters included (PostgreSQL fast path)', () => {
  assert.equal(saslprep('pencil'), 'pencil')
  assert.equal(saslprep('a\u0007b\u007f'), 'a\u0007b\u007f')
  assert.equal(saslprep(''), '')
})

test('RFC 4013 examples', () => {
  assert.equal(saslprep('I\u00adX'), 'IX') // soft hyphen mapped to nothing
  assert.equal(saslprep('\u00aa'), 'a') // NFKC
  assert.equal(saslprep('\u2168'), 'IX') // NFKC
})

test('mapping and NFKC', () => {
  assert.equal(saslprep('\uff50\uff41\uff53\uff53'), 'pass') // full-width letters
  assert.equal(saslprep('a\u00a0b\u3000c'), 'a b c') // non-ASCII spaces
  assert.equal(saslprep('a\u200bb'), 'a b') // U+200B: space mapping wins over B.1, as in PG
  assert.equal(saslprep('cafe\u0301'), 'caf\u00e9') // NFD → NFC
  assert.equal(saslprep('\u0627\u00ad\u0628'), '\u0627\u0628') // valid RTL string
})

test('invalid SASLprep input falls back to the raw password', () => {
  assert.equal(saslprep('\uff50\u0007'), '\uff50\u0007') // prohibited (control)
  assert.equal(saslprep('\uff50\ue000'), '\uff50\ue000') // prohibited (private use)
  assert.equal(saslprep('\uff50\u{1f600}'), '\uff50\u{1f600}') // unassigned in Unicode 3.2
  assert.equal(saslprep('\u00ad'), '\u00ad') // empty after mapping
  assert.equal(saslprep('\u0627\u00ad1'), '\u0627\u00ad1') // RTL must end with RandALCat
  assert.equal(saslprep('\u0627a\u00ad\u0628'), '\u0627a\u00ad\u0628') // RTL mixed with L
})
