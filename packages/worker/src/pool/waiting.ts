/**
 * The clients of one pool in this worker that wait for a server, oldest
 * first, with when each began to wait (preciseClock()). The start times are
 * kept here rather than on the client, whose field would hold a boxed number
 * for good once it held a fraction; the client keeps the whole milliseconds.
 * Taking the head moves an index: the array is compacted now and then, not
 * shifted per client.
 */
export class WaitQueue<T> {
  private readonly clients: T[] = []
  private readonly starts: number[] = []
  private head = 0

  get count(): number {
    return this.clients.length - this.head
  }

  /** When the longest-waiting client began to wait, 0 if none waits. */
  get oldestStart(): number {
    return this.count > 0 ? this.starts[this.head]! : 0
  }

  push(client: T, start: number): void {
    this.clients.push(client)
    this.starts.push(start)
  }

  /** The longest-waiting client, out of the queue; null if none waits. */
  shift(): T | null {
    if (this.head >= this.clients.length) return null
    const client = this.clients[this.head++]!
    if (this.head > 64 && this.head * 2 > this.clients.length) {
      this.clients.splice(0, this.head)
      this.starts.splice(0, this.head)
      this.head = 0
    }
    return client
  }

  /** A waiting client left (disconnect, timeout). Whether it was waiting. */
  remove(client: T): boolean {
    const i = this.clients.indexOf(client, this.head)
    if (i < 0) return false
    this.clients.splice(i, 1)
    this.starts.splice(i, 1)
    return true
  }

  /** The waiting clients, oldest first (a copy: the caller may drop some). */
  list(): T[] {
    return this.clients.slice(this.head)
  }
}
