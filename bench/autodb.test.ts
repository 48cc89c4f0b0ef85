import assert from 'node:assert/strict'
import { test } from 'node:test'
import { mappingRss } from './autodb.ts'

const SMAPS = `55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  12 kB
7f3a10000000-7f3a11dcd000 rw-p 00000000 00:00 0 
Size:              30516 kB
KernelPageSize:        4 kB
Rss:                1432 kB
Pss:                1432 kB
7f3a12000000-7f3a12021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                 132 kB
`

test("the shared memory's RSS is that of the mapping of its size", () => {
  // 31,246,336 bytes: 30,514 kB of pages, and malloc's header page.
  assert.equal(mappingRss(SMAPS, 31_246_336), 1432 * 1024)
  assert.equal(mappingRss(SMAPS, 1_000_000_000), null)
})
