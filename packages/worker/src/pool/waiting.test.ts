import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import fc from 'fast-check'
import { WaitQueue } from './waiting.ts'

describe('the clients waiting for a server', () => {
  test('served in arrival order, with when each began to wait', () => {
    const queue = new WaitQueue<string>()
    assert.equal(queue.shift(), null)
    assert.equal(queue.oldestStart, 0)
    queue.push('a', 10)
    queue.push('b', 20)
    queue.push('c', 30)
    assert.equal(queue.count, 3)
    assert.equal(queue.oldestStart, 10)
    assert.equal(queue.shift(), 'a')
    assert.equal(queue.oldestStart, 20)
    assert.equal(queue.remove('c'), true)
    assert.equal(queue.remove('c'), false)
    assert.deepEqual(queue.list(), ['b'])
    assert.equal(queue.shift(), 'b')
    assert.equal(queue.count, 0)
    assert.equal(queue.oldestStart, 0)
  })

  test('a client served is not removed again, nor seen by list()', () => {
    const queue = new WaitQueue<string>()
    queue.push('a', 1)
    queue.push('b', 2)
    assert.equal(queue.shift(), 'a')
    assert.equal(queue.remove('a'), false)
    assert.deepEqual(queue.list(), ['b'])
  })

  test('any mix of arrivals, services and departures keeps order and start times (as a plain list would)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.constant('push'), fc.constant('shift'), fc.nat({ max: 400 })), {
          maxLength: 400,
        }),
        (ops) => {
          const queue = new WaitQueue<number>()
          const model: number[] = []
          let next = 1
          for (const op of ops) {
            if (op === 'push') {
              queue.push(next, next * 10)
              model.push(next++)
            } else if (op === 'shift') {
              assert.equal(queue.shift(), model.shift() ?? null)
            } else {
              const i = model.indexOf(op)
              assert.equal(queue.remove(op), i >= 0)
              if (i >= 0) model.splice(i, 1)
            }
            assert.equal(queue.count, model.length)
            assert.equal(queue.oldestStart, model.length > 0 ? model[0]! * 10 : 0)
          }
          assert.deepEqual(queue.list(), model)
        },
      ),
    )
  })
})
